"""What ``rllib-muzero train`` prints while a tuned example trains: Tune's status table with the figures a MuZero
user watches (:class:`StatusTable`), and one progress line per trial (:class:`ProgressLines`).

Why: Tune's table shows the first four top-level counters of a result besides its default columns; for RLlib results
these are env-runner health counters (healthy runners, in-flight requests, restarts, dropped runners), never the
nested ``env_runners/episode_return_mean``; and setting a Tune metric to get it into the heartbeat prints the trial's
whole config with it. :class:`StatusTable` shows return, env steps, learner updates and the evaluation return
instead (the health columns only while a runner is unhealthy); :class:`ProgressLines` prints a compact line at most
every ``min_interval_s`` seconds per trial plus the trial's last result.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ray.tune import Callback
from ray.tune.experimental.output import (
    TuneTerminalReporter,
    _get_trial_table_data,
    _TrialTableData,
)
from ray.tune.utils.util import unflattened_lookup


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


# ---------------------------------------------------------------------------------------------------------------------
# Tune's status table.

# (result key, column header), in table order; a column shows when some trial's last result has the key.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("training_iteration", "iter"),
    ("time_total_s", "total time (s)"),
    ("num_env_steps_sampled_lifetime", "env steps"),
    ("env_runners/episode_return_mean", "return (exploring)"),
    ("env_runners/episode_len_mean", "episode length"),
    # learner updates: one column per policy, inserted here (see _learner_update_columns)
    ("evaluation/env_runners/episode_return_mean", "return (evaluation)"),
)
# RLlib's env-runner health counters: shown only while some trial is unhealthy (see is_unhealthy).
HEALTH_COLUMNS: tuple[tuple[str, str], ...] = (
    ("num_healthy_workers", "healthy runners"),
    ("actor_manager_num_outstanding_async_reqs", "in-flight requests"),
    ("num_remote_worker_restarts", "runner restarts"),
    ("num_env_runners_dropped_lifetime", "runners dropped"),
)
_LEARNER_UPDATES = "info/learner/{}/learner_stats/num_grad_updates"  # lifetime count per policy


def is_unhealthy(result: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> bool:
    """Whether a result reports an env-runner problem: a restart, a dropped runner, or fewer healthy remote runners
    than the trial's config asks for (``num_env_runners``, or its old name ``num_workers``)."""
    if (_lookup(result, "num_remote_worker_restarts") or 0) > 0:
        return True
    if (_lookup(result, "num_env_runners_dropped_lifetime") or 0) > 0:
        return True
    config = config or {}
    wanted = config.get("num_env_runners", config.get("num_workers"))
    healthy = _lookup(result, "num_healthy_workers")
    return isinstance(wanted, int) and healthy is not None and healthy < wanted


def table_columns(trials: list) -> list[tuple[str, str]]:
    """The ``(result key, header)`` columns of the status table for these trials: :data:`TABLE_COLUMNS` with the
    learner updates of each policy, plus :data:`HEALTH_COLUMNS` while a trial is unhealthy; columns no trial has a
    value for yet are left out."""
    results = [(t.last_result or {}, t.config or {}) for t in trials]
    policies: list[str] = []
    for result, _ in results:
        learner = _lookup(result, "info/learner")
        for pid in learner if isinstance(learner, Mapping) else ():
            if _lookup(learner[pid], "learner_stats/num_grad_updates") is not None and pid not in policies:
                policies.append(pid)
    updates = [(_LEARNER_UPDATES.format(pid), "learner updates" if policies == ["default_policy"]
                else f"updates {pid}") for pid in policies]
    columns = [*TABLE_COLUMNS[:5], *updates, *TABLE_COLUMNS[5:]]
    if any(is_unhealthy(result, config) for result, config in results):
        columns += HEALTH_COLUMNS
    return [(key, header) for key, header in columns
            if any(unflattened_lookup(key, result, default=None) is not None for result, _ in results)]


class StatusTable(TuneTerminalReporter):
    """Tune's status reporter with MuZero's columns (:func:`table_columns`) instead of the first four counters.

    Everything else is Tune's own terminal reporter: the experiment header, the per-trial events (start with its
    config, completion, checkpoints, errors) and the final table. Install it with :func:`status_table`.
    """

    def _get_heartbeat(self, trials, *sys_args, force_full_output: bool = False):
        heartbeat, _ = super()._get_heartbeat(trials, *sys_args, force_full_output=force_full_output)
        columns = table_columns(trials)
        table = _get_trial_table_data(trials, param_keys=self._inferred_params, metric_keys=[k for k, _ in columns],
                                      all_rows=force_full_output, wrap_headers=self._wrap_headers)
        num_params = len(table.header) - 2 - len(columns)  # Tune's header: name, status, params, metrics
        header = table.header[:2 + num_params] + [h for _, h in columns]
        return heartbeat, _TrialTableData(header, table.data)


@contextlib.contextmanager
def status_table() -> Iterator[None]:
    """Within the block, Tune's (new-style) status reporter is a :class:`StatusTable`.

    Why a patch: Tune always appends its own reporter to the run's callbacks (``_create_default_callbacks`` calls
    ``ray.tune.experimental.output._detect_reporter``) and prints its table through the first reporter among the
    callbacks; a second reporter passed in ``RunConfig(callbacks=...)`` would print every trial event twice, and the
    one Tune does not pick never gets its start time (its error report then fails). So the function that makes
    Tune's reporter is swapped for one that makes a :class:`StatusTable` with the same arguments, for the duration
    of the block only (the ``rllib-muzero train`` command's ``tuner.fit()``). Tune's other entry points and other
    reporters (notebooks, Ray Train) are untouched.
    """
    from ray.tune.experimental import output

    original = output._detect_reporter

    def detect_reporter(verbosity, num_samples, entrypoint=None, metric=None, mode=None, config=None,
                        progress_metrics=None):
        reporter = original(verbosity, num_samples, entrypoint=entrypoint, metric=metric, mode=mode, config=config,
                            progress_metrics=progress_metrics)
        if type(reporter) is not TuneTerminalReporter:
            return reporter
        return StatusTable(verbosity, num_samples=num_samples, metric=metric, mode=mode, config=config,
                           progress_metrics=progress_metrics)

    output._detect_reporter = detect_reporter
    try:
        yield
    finally:
        output._detect_reporter = original
