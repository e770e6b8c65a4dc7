"""rllib-muzero: MuZero (Schrittwieser et al., arXiv 1911.08265) as a first-class Ray RLlib algorithm, in PyTorch.

Importing the package registers the algorithm with Ray Tune as ``"MuZero"`` and the built-in networks with RLlib's
``ModelCatalog`` (``"muzero_fc"``), so ``tune.Tuner("MuZero", ...)`` and YAML files with ``run: MuZero`` work.
"""

from ray import tune

from rllib_muzero.algorithm import MuZero, MuZeroConfig
from rllib_muzero.models import MuZeroModelV2, register_models
from rllib_muzero.policy import MuZeroTorchPolicy

__version__ = "0.1.0"

register_models()
tune.register_trainable("MuZero", MuZero)

__all__ = ["MuZero", "MuZeroConfig", "MuZeroModelV2", "MuZeroTorchPolicy", "__version__"]
