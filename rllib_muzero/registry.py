"""Everything this package registers with Ray, in one place (run by ``import rllib_muzero``).

- The built-in networks with RLlib's ``ModelCatalog`` (:data:`NETWORKS`, :func:`register_models`), so
  ``model={"custom_model": "muzero_fc"}`` and the like resolve in every process of the Ray session.
- :func:`on_every_ray_init`: registrations that must survive ``ray.shutdown()`` followed by a new ``ray.init()`` in
  the same process (notebooks), see there.
- A logging filter for one RLlib warning that does not apply to MuZero (:func:`install_log_filters`).

The algorithm itself is registered with Tune as ``"MuZero"`` in ``rllib_muzero/__init__.py``, next to the import of
the class (this module stays below ``algorithm.py`` in the layering, see docs/design.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ray.rllib.models import ModelCatalog

from rllib_muzero.conv_models import CONV_MODELS
from rllib_muzero.models import DEFAULT_MODEL_NAME, FullyConnectedMuZeroModel, MuZeroModelV2

__all__ = ["NETWORKS", "install_log_filters", "on_every_ray_init", "register_models"]

NETWORKS: dict[str, type[MuZeroModelV2]] = {DEFAULT_MODEL_NAME: FullyConnectedMuZeroModel, **CONV_MODELS}
"""``custom_model`` name -> class of every built-in network: ``"muzero_fc"`` (:mod:`rllib_muzero.models`),
``"muzero_resnet"`` and ``"muzero_tiny"`` (:mod:`rllib_muzero.conv_models`)."""


def register_models() -> None:
    """Registers every entry of :data:`NETWORKS` with RLlib's ``ModelCatalog`` (idempotent)."""
    for name, model_class in NETWORKS.items():
        ModelCatalog.register_custom_model(name, model_class)


def on_every_ray_init(registration: Callable[[], None]) -> None:
    """Runs ``registration`` now, and again after every later ``ray.init()`` in this process (once per function).

    Why: Tune's registry, which holds ``ModelCatalog``'s custom models, ``tune.register_trainable`` and
    ``tune.register_env``, keeps its values in the Ray session's internal key-value store, where every process of the
    session (env runners, Tune actors) reads them. A value registered before ``ray.init()`` waits in the process and
    is written at init, once: after ``ray.shutdown()`` the store is gone with the session and nothing is left to write,
    so building again after a new ``ray.init()`` in the same process failed with "Registry value for
    rllib_model/muzero_fc doesn't exist". Ray runs ``ray._private.worker._post_init_hooks`` at the end of every
    ``ray.init()`` (Tune's registry writes its pending values from there); ``registration`` joins them, so each new
    session gets the registrations before anything is built in it, and its workers read them from its store.
    (Private to Ray, hence the guard: without it, registrations happen at import only, as before; tested by
    tests/test_resilience.py.)
    """
    registration()
    try:
        from ray._private.worker import _post_init_hooks as hooks
    except ImportError:
        return
    if isinstance(hooks, list) and registration not in hooks:
        hooks.append(registration)


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
