"""rllib-muzero: MuZero (Schrittwieser et al., arXiv 1911.08265) as a first-class Ray RLlib algorithm, in PyTorch.

Importing the package registers the algorithm with Ray Tune as ``"MuZero"`` and the built-in networks with RLlib's
``ModelCatalog`` (``"muzero_fc"``, ``"muzero_resnet"``, ``"muzero_tiny"``: :mod:`rllib_muzero.registry`), so
``tune.Tuner("MuZero", ...)`` and YAML files with ``run: MuZero`` work; the registrations are repeated after every
``ray.init()`` of the process, so they survive ``ray.shutdown()`` (:func:`rllib_muzero.registry.on_every_ray_init`).
"""

from ray import tune

from rllib_muzero.algorithm import MuZero, MuZeroConfig
from rllib_muzero.models import MuZeroModelV2
from rllib_muzero.policy import MuZeroTorchPolicy
from rllib_muzero.registry import install_log_filters, on_every_ray_init, register_models

__version__ = "0.1.0"


def _register_with_ray() -> None:
    """What the package registers with Ray: the networks (registry.py) and the algorithm (here)."""
    register_models()
    tune.register_trainable("MuZero", MuZero)


# Now, and after every later ray.init() in this process: ray.shutdown() drops the registrations with the session.
on_every_ray_init(_register_with_ray)
install_log_filters()

__all__ = ["MuZero", "MuZeroConfig", "MuZeroModelV2", "MuZeroTorchPolicy", "__version__"]
