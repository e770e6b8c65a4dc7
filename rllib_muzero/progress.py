"""One progress line per trial for ``rllib-muzero train``: what a MuZero user watches while a tuned example trains.

Why: Tune's progress table shows only the first few top-level counters of a result (for RLlib results these are
env-runner health counters), never the nested ``env_runners/episode_return_mean``; and setting a Tune metric to get
it into the heartbeat prints the trial's whole config with it. A :class:`ray.tune.Callback` prints a compact line
instead, at most every ``min_interval_s`` seconds per trial plus the trial's last result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from ray.tune import Callback


def _lookup(result: Mapping[str, Any], path: str) -> Any:
    value: Any = result
    for key in path.split("/"):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _number(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def format_progress(trial_name: str, result: Mapping[str, Any]) -> str:
    """``<trial> iter N | env steps S | return mean R (exploring) | episode length L | learner updates U | T s``."""
    updates = _lookup(result, "info/learner/default_policy/learner_stats/num_grad_updates")  # lifetime count
    return (
        f"{trial_name} iter {_number(result.get('training_iteration'), 'd')}"
        f" | env steps {_number(result.get('num_env_steps_sampled_lifetime'), ',d')}"
        f" | return mean {_number(_lookup(result, 'env_runners/episode_return_mean'), '.1f')} (exploring)"
        f" | episode length {_number(_lookup(result, 'env_runners/episode_len_mean'), '.1f')}"
        + (f" | learner updates {_number(updates, ',d')}" if updates is not None else "")
        + f" | {_number(result.get('time_total_s'), '.0f')} s"
    )


class ProgressLines(Callback):
    """Prints :func:`format_progress` for each trial's results (throttled) and for its last one."""

    def __init__(self, min_interval_s: float = 10.0, print_fn: Callable[[str], None] | None = None) -> None:
        self.min_interval_s = float(min_interval_s)
        self._print = print_fn or (lambda line: print(line, flush=True))
        self._last_printed: dict[str, float] = {}
        self._last_result: dict[str, Mapping[str, Any]] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        now = time.monotonic()
        self._last_result[trial.trial_id] = result
        if now - self._last_printed.get(trial.trial_id, -math.inf) >= self.min_interval_s:
            self._last_printed[trial.trial_id] = now
            self._last_result.pop(trial.trial_id)
            self._print(format_progress(str(trial), result))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self._last_result.pop(trial.trial_id, None)
        if result is not None:  # not printed yet: the final line
            self._print(format_progress(str(trial), result))
