"""Everything this package registers with Ray, in one place (run once by ``import rllib_muzero``).

- The built-in networks with RLlib's ``ModelCatalog`` (:data:`NETWORKS`, :func:`register_models`), so
  ``model={"custom_model": "muzero_fc"}`` and the like resolve in every process that imports the package.
- A logging filter for one RLlib warning that does not apply to MuZero (:func:`install_log_filters`).

The algorithm itself is registered with Tune as ``"MuZero"`` in ``rllib_muzero/__init__.py``, next to the import of
the class (this module stays below ``algorithm.py`` in the layering, see docs/design.md).
"""

from __future__ import annotations

import logging

from ray.rllib.models import ModelCatalog

from rllib_muzero.conv_models import CONV_MODELS
from rllib_muzero.models import DEFAULT_MODEL_NAME, FullyConnectedMuZeroModel, MuZeroModelV2

__all__ = ["NETWORKS", "install_log_filters", "register_models"]

NETWORKS: dict[str, type[MuZeroModelV2]] = {DEFAULT_MODEL_NAME: FullyConnectedMuZeroModel, **CONV_MODELS}
"""``custom_model`` name -> class of every built-in network: ``"muzero_fc"`` (:mod:`rllib_muzero.models`),
``"muzero_resnet"`` and ``"muzero_tiny"`` (:mod:`rllib_muzero.conv_models`)."""


def register_models() -> None:
    """Registers every entry of :data:`NETWORKS` with RLlib's ``ModelCatalog`` (idempotent)."""
    for name, model_class in NETWORKS.items():
        ModelCatalog.register_custom_model(name, model_class)


# RLlib's PolicySpec.serialize() logs "Can not figure out a durable policy name for <class ...>" on every
# checkpoint of a policy class missing from RLlib's own `ray.rllib.algorithms.registry.POLICIES` table, which only
# lists RLlib's built-in policies. For MuZero's policy the warning is noise: the class is pickled by reference
# (`rllib_muzero.policy.MuZeroTorchPolicy`) and restores in any process where the package is installed (tested by
# the checkpoint tests). So the filter sits on the logger that emits it, `ray.rllib.policy.policy`, and drops that
# message for this package's policy classes only: the same warning about anyone else's policy still shows.
_DURABLE_NAME_WARNING = "Can not figure out a durable policy name for "
_OUR_POLICY_CLASSES = "<class 'rllib_muzero."


class _MuZeroDurablePolicyNameFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        return not (message.startswith(_DURABLE_NAME_WARNING)
                    and message[len(_DURABLE_NAME_WARNING):].startswith(_OUR_POLICY_CLASSES))


def install_log_filters() -> None:
    """Installs the filter above on ``ray.rllib.policy.policy`` (once per process; idempotent)."""
    logger = logging.getLogger("ray.rllib.policy.policy")
    if not any(isinstance(f, _MuZeroDurablePolicyNameFilter) for f in logger.filters):
        logger.addFilter(_MuZeroDurablePolicyNameFilter())
