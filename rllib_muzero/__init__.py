"""rllib-muzero: MuZero (Schrittwieser et al., arXiv 1911.08265) as a first-class Ray RLlib algorithm, in PyTorch.

Importing the package registers the algorithm with Ray Tune as ``"MuZero"`` and the built-in networks with RLlib's
``ModelCatalog`` (``"muzero_fc"``, ``"muzero_resnet"``, ``"muzero_tiny"``: :mod:`rllib_muzero.registry`), so
``tune.Tuner("MuZero", ...)`` and YAML files with ``run: MuZero`` work.
"""

from ray import tune

from rllib_muzero.algorithm import MuZero, MuZeroConfig
from rllib_muzero.models import MuZeroModelV2
from rllib_muzero.policy import MuZeroTorchPolicy
from rllib_muzero.registry import install_log_filters, register_models

__version__ = "0.1.0"

# What the package registers with Ray: the networks (and a log filter) in registry.py, the algorithm here.
register_models()
install_log_filters()
tune.register_trainable("MuZero", MuZero)

__all__ = ["MuZero", "MuZeroConfig", "MuZeroModelV2", "MuZeroTorchPolicy", "__version__"]
