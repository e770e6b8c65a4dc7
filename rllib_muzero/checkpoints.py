"""Finding, checking and restoring MuZero checkpoints (used by :mod:`rllib_muzero.evaluate` and the command).

Checkpoints are found on the file system alone (no Ray needed): a checkpoint directory (``algo.save()``), or a Tune
trial / experiment directory, either with checkpoint names or standing for its latest checkpoint. They are checked to
be MuZero's from their metadata without restoring anything, then restored with RLlib (``Algorithm.from_state`` of
the checkpoint's state) with no remote env runners and an empty replay, which is all evaluation needs. Every user
mistake raises :class:`~rllib_muzero.play.EvaluationError` with a one-line message.

Saves are crash-safe (:func:`rllib_muzero.algorithm.replace_checkpoint_dir`): a save killed between its renames can
leave a checkpoint path empty with the checkpoint in a hidden sibling. Every lookup here first puts such checkpoints
back (:func:`~rllib_muzero.algorithm.recover_checkpoint_dir`, a rename; nothing is deleted) and never lists the
hidden siblings themselves.
"""

from __future__ import annotations

import importlib
import os
import pickle
import pickletools
import re
from collections.abc import Sequence
from typing import Any

from rllib_muzero.algorithm import is_interrupted_save, recover_checkpoint_dir, recover_checkpoints_in
from rllib_muzero.play import EvaluationError

__all__ = ["check_muzero_checkpoint", "find_checkpoints", "is_checkpoint_dir", "latest_checkpoints",
           "load_algorithm"]

_CHECKPOINT_FILES = ("rllib_checkpoint.json", "algorithm_state.pkl", "algorithm_state.msgpck",
                     "class_and_ctor_args.pkl", "policy_state.pkl")


def _is_checkpoint_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in _CHECKPOINT_FILES)


def _subdirs(path: str) -> list[str]:
    try:
        return sorted(d for d in os.listdir(path)
                      if os.path.isdir(os.path.join(path, d)) and not is_interrupted_save(d))
    except OSError:
        return []


def _checkpoint_names_under(path: str) -> list[str]:
    """Names of the checkpoints in ``path`` (a trial directory) or in its subdirectories (an experiment)."""
    names = {d for d in _subdirs(path) if _is_checkpoint_dir(os.path.join(path, d))}
    for trial in _trials(path):
        names.update(d for d in _subdirs(os.path.join(path, trial)) if _is_checkpoint_dir(os.path.join(path, trial, d)))
    return sorted(names)


def _trials(path: str) -> list[str]:
    """Subdirectories of ``path`` that may hold checkpoints (not checkpoints themselves: RLlib's new-stack
    checkpoints nest component checkpoints)."""
    return [d for d in _subdirs(path) if not _is_checkpoint_dir(os.path.join(path, d))]


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _unique_labels(paths: list[str]) -> list[str]:
    """Shortest trailing path parts that tell the checkpoints apart (``checkpoint_000003``, or ``trial/checkpoint_..``
    when two trials hold checkpoints of the same name)."""
    parts = [os.path.normpath(p).split(os.sep) for p in paths]
    depth = [1] * len(paths)
    for _ in range(max((len(p) for p in parts), default=1)):
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        duplicated = {x for x in labels if labels.count(x) > 1}
        if not duplicated:
            return labels
        depth = [d + 1 if lab in duplicated else d for lab, d in zip(labels, depth)]
    return [os.path.normpath(p) for p in paths]



def _checkpoint_order(path: str) -> tuple[int, float, str]:
    """Sort key of a checkpoint directory: Tune's index in ``checkpoint_000012`` (it keeps counting across resumes),
    then the modification time (for other names), then the name."""
    name = os.path.basename(os.path.normpath(path))
    match = re.fullmatch(r"checkpoint_(\d+)", name)
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        mtime = 0.0
    return (int(match.group(1)) if match else -1, mtime, name)


def _recover_under(path: str) -> None:
    """Puts back the checkpoints of interrupted saves in ``path`` and in its subdirectories (trials)."""
    recover_checkpoints_in(path)
    for trial in _subdirs(path):
        recover_checkpoints_in(os.path.join(path, trial))


def latest_checkpoints(path: str) -> list[str]:
    """The latest checkpoint (absolute path) in a Tune trial directory ``path``, or in each trial directory of an
    experiment directory ``path``; ``[]`` when it holds none. Latest means the highest index of Tune's
    ``checkpoint_<index>`` names (the last one saved), by modification time among other names."""
    _recover_under(path)
    groups = [os.path.join(path, d) for d in _subdirs(path) if _is_checkpoint_dir(os.path.join(path, d))]
    latest = [max(groups, key=_checkpoint_order)] if groups else []
    for trial in _trials(path):
        own = [os.path.join(path, trial, d) for d in _subdirs(os.path.join(path, trial))
               if _is_checkpoint_dir(os.path.join(path, trial, d))]
        if own:
            latest.append(max(own, key=_checkpoint_order))
    return [os.path.abspath(p) for p in latest]

def find_checkpoints(paths: Sequence[str], names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Resolves the command line's checkpoints to ``[(label, absolute path)]``.

    Without ``names`` a path is either a checkpoint directory (``algo.save()``) or a Tune trial or experiment
    directory, which stands for its latest checkpoint (each trial's latest in an experiment: see
    :func:`latest_checkpoints`). With ``names`` every path is a Tune experiment or trial directory and each name
    (``checkpoint_000003``, or just ``3``) is looked up in it and in its trial subdirectories (every trial holding it
    is evaluated).
    """
    if not paths:
        raise EvaluationError("no checkpoint given: pass checkpoint directories, or an experiment directory and "
                              "--checkpoints NAME...")
    found: list[str] = []
    for path in paths:
        path = recover_checkpoint_dir(path)
        if not os.path.exists(path):
            raise EvaluationError(f"no such checkpoint or directory: {path}")
        if names is None:
            if _is_checkpoint_dir(path):
                found.append(os.path.abspath(path))
                continue
            latest = latest_checkpoints(path) if os.path.isdir(path) else []
            if not latest:
                raise EvaluationError(f"{path} is not an RLlib checkpoint (no rllib_checkpoint.json or "
                                      "algorithm_state.pkl in it) and holds none")
            found.extend(latest)
            continue
        if not os.path.isdir(path):
            raise EvaluationError(f"{path} is not a directory: --checkpoints looks up names in a Tune experiment or "
                                  "trial directory")
        _recover_under(path)
        for name in names:
            wanted = f"checkpoint_{int(name):06d}" if name.isdigit() else name
            direct = os.path.join(path, wanted)
            if _is_checkpoint_dir(direct):
                matches = [direct]
            else:
                matches = [os.path.join(path, trial, wanted) for trial in _trials(path)
                           if _is_checkpoint_dir(os.path.join(path, trial, wanted))]
            if not matches:
                available = _checkpoint_names_under(path)
                hint = f"available: {_listing(available)}" if available else "it holds no checkpoints"
                raise EvaluationError(f"checkpoint `{name}` not found in {path}; {hint}")
            found.extend(os.path.abspath(m) for m in matches)
    found = list(dict.fromkeys(found))
    return list(zip(_unique_labels(found), found))


def _peek_algorithm_class(state_file: str, max_ops: int = 5000) -> tuple[str, str] | None:
    """``(module, name)`` of the ``algorithm_class`` entry of a pickled old-stack algorithm state, read from the first
    pickle opcodes without loading the state (which holds the replay buffer); None when it cannot be told."""
    try:
        with open(state_file, "rb") as f:
            strings: list[str] = []
            after_key = False
            for k, (op, arg, _) in enumerate(pickletools.genops(f)):
                if k >= max_ops:
                    return None
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    if after_key:
                        strings.append(arg)
                    elif arg == "algorithm_class":
                        after_key = True
                elif after_key and op.name in ("STACK_GLOBAL", "GLOBAL"):
                    if op.name == "GLOBAL":
                        module, _, name = str(arg).partition(" ")
                    elif len(strings) >= 2:
                        module, name = strings[-2], strings[-1]
                    else:
                        return None
                    # A class pickled by value (cloudpickle rebuilds it, e.g. Tune's trainable wrapper) starts with
                    # cloudpickle's own helpers: tell at load time.
                    return None if "cloudpickle" in module else (module, name)
                elif after_key and op.name not in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET"):
                    return None  # pickled by value or in another layout: tell at load time
    except (OSError, ValueError, pickle.UnpicklingError):
        return None
    return None


def _require_muzero(cls: Any, path: str, name: str | None = None) -> None:
    from rllib_muzero.algorithm import MuZero

    if not (isinstance(cls, type) and issubclass(cls, MuZero)):
        name = name or getattr(cls, "__name__", repr(cls))
        raise EvaluationError(f"{path} is a checkpoint of {name}, not MuZero: evaluate plays MuZero checkpoints only")


def check_muzero_checkpoint(path: str) -> None:
    """Raises EvaluationError unless ``path`` is an RLlib Algorithm checkpoint written by MuZero (or a subclass).

    The algorithm class is read from the checkpoint's metadata (new API stack: ``class_and_ctor_args.pkl``; old
    stack: the first entry of ``algorithm_state.pkl``) without restoring anything.
    """
    ctor_file = os.path.join(path, "class_and_ctor_args.pkl")
    if os.path.exists(ctor_file):  # only RLlib's new API stack writes it; MuZero runs on the old stack
        try:
            with open(ctor_file, "rb") as f:
                cls = pickle.load(f).get("class")
        except Exception as e:  # a class that cannot be imported, a damaged file, ...
            raise EvaluationError(f"{path}: cannot read the checkpoint's algorithm class ({_first_line(e)})") from None
        _require_muzero(cls, path)
        return
    from ray.rllib.utils.checkpoints import get_checkpoint_info

    try:
        info = get_checkpoint_info(path)
    except Exception as e:
        raise EvaluationError(f"{path} is not a valid RLlib checkpoint: {_first_line(e)}") from None
    if info.get("type") != "Algorithm":
        raise EvaluationError(f"{path} is a {info.get('type')} checkpoint; evaluate needs an Algorithm checkpoint "
                              "(written by algo.save() or Tune)")
    if info.get("format") != "cloudpickle":
        return  # told at load time
    peeked = _peek_algorithm_class(str(info["state_file"]))
    if peeked is None:
        return
    module, name = peeked
    try:
        cls = getattr(importlib.import_module(module), name.split(".")[0])
        for part in name.split(".")[1:]:
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as e:
        raise EvaluationError(f"{path} is a checkpoint of {module}.{name}, which cannot be imported here: "
                              f"{_first_line(e)}") from None
    _require_muzero(cls, path, name)


def load_algorithm(path: str) -> Any:
    """Restores a MuZero checkpoint for evaluation (Ray must be initialised): checked first
    (:func:`check_muzero_checkpoint`), then built with no remote env runners, one env, no evaluation runners and an
    empty replay buffer (evaluation needs the networks, the env settings and the observation filters only)."""
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.utils.checkpoints import get_checkpoint_info

    path = recover_checkpoint_dir(path)
    check_muzero_checkpoint(path)
    try:
        state = Algorithm._checkpoint_info_to_algorithm_state(get_checkpoint_info(path))
    except Exception as e:
        raise EvaluationError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    _require_muzero(state.get("algorithm_class"), path)
    extra = state.get("muzero")
    if isinstance(extra, dict) and "replays" in extra:
        state["muzero"] = dict(extra, replays={})
    config = state.get("config")
    if isinstance(config, AlgorithmConfig):
        config = config.copy(copy_frozen=False)
        config.env_runners(num_env_runners=0, num_envs_per_env_runner=1, create_local_env_runner=True)
        config.evaluation(evaluation_num_env_runners=0)
    elif isinstance(config, dict):
        config = dict(config, num_env_runners=0, num_envs_per_env_runner=1, create_local_env_runner=True,
                      evaluation_num_env_runners=0)
    state["config"] = config
    return Algorithm.from_state(state)


def is_checkpoint_dir(path: str) -> bool:
    """Whether ``path`` is an RLlib checkpoint directory (it holds RLlib's checkpoint files)."""
    return _is_checkpoint_dir(path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
