"""The learner thread of MuZero's asynchronous pipeline (``async_sampling``), after RLlib's old-stack IMPALA.

RLlib's :class:`ray.rllib.execution.learner_thread.LearnerThread` takes train batches from a queue; MuZero's learner
samples its own batches from the sequence replay instead, so what the driver hands over is *credit*: the number of
learner updates the replay ratio (``training_intensity``) owes for the env steps stored so far. The thread runs one
update per credit and waits when it has none (the learner never runs ahead of the ratio); the driver holds back new
sample requests while the credit owed exceeds a bound (``max_learner_lag``), so the learner never falls far behind.

Everything the driver's main thread does to the learner's state (storing fragments into the replay, reading weights
to send to the env runners, saving or restoring a checkpoint) happens inside :meth:`MuZeroLearnerThread.paused`: the
thread finishes the update it is in, then waits until the pause ends, so the main thread never sees (or writes) a
half-applied update. A pause is granted ahead of the next update (pausing is fair: the thread cannot take the lock
back before a waiting pauser, as a plain ``threading.Lock`` would let it).

The thread is framework-free: it calls ``learn_fn()`` (one update of every trained policy) and knows nothing of Ray.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["MuZeroLearnerThread"]


class MuZeroLearnerThread(threading.Thread):
    """Runs ``learn_fn()`` once per credited update, in the background, until stopped.

    Args:
        learn_fn: one learner update of every trained policy; returns ``{policy_id: {"learner_stats": ...}}``.

    Attributes (read by the driver):
        num_updates: updates completed since the thread started.
        busy_seconds: wall-clock seconds spent inside ``learn_fn``.
        last_results: what the last update returned.
        error: the exception that stopped the thread, if any (re-raised by :meth:`raise_if_failed`).
    """

    def __init__(self, learn_fn: Callable[[], dict[str, Any]]):
        super().__init__(name="muzero-learner", daemon=True)
        self._learn_fn = learn_fn
        self._cond = threading.Condition()
        self._owed = 0  # credited updates not yet run
        self._pauses = 0  # active pause requests (re-entrant)
        self._busy = False  # inside learn_fn
        self._stopped = False
        self.num_updates = 0
        self.busy_seconds = 0.0
        self.last_results: dict[str, Any] = {}
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ driver side
    @property
    def owed(self) -> int:
        """Updates credited but not yet run (the learner's lag behind the replay ratio)."""
        return self._owed

    def credit(self, num_updates: int) -> None:
        """Owes the learner ``num_updates`` more updates (the replay ratio's share of newly stored env steps)."""
        if num_updates <= 0:
            return
        with self._cond:
            self._owed += int(num_updates)
            self._cond.notify_all()

    def take_owed(self) -> int:
        """Removes and returns the updates still owed (for a checkpoint that carries them over)."""
        with self._cond:
            owed, self._owed = self._owed, 0
            return owed

    def pause(self) -> None:
        """Stops the thread at the next update boundary and returns once no update is running."""
        with self._cond:
            self._pauses += 1
            self._cond.notify_all()
            while self._busy:
                self._cond.wait()

    def resume(self) -> None:
        """Ends one :meth:`pause`."""
        with self._cond:
            if self._pauses <= 0:
                raise RuntimeError("MuZeroLearnerThread.resume() without a matching pause()")
            self._pauses -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No learner update runs inside this block (nested blocks are fine)."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def wait_for_progress(self, timeout: float) -> None:
        """Waits until an update completes (or the thread stops), at most ``timeout`` seconds."""
        with self._cond:
            if not self._stopped:
                self._cond.wait(timeout)

    def raise_if_failed(self) -> None:
        """Re-raises, in the caller's thread, the exception that stopped the learner."""
        if self.error is not None:
            raise self.error
        if self.ident is not None and not self.is_alive() and not self._stopped:
            raise RuntimeError("The MuZero learner thread died while training.")

    def stop(self, timeout: float | None = 60.0) -> None:
        """Lets the update in progress finish, then ends the thread."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self.ident is not None and self is not threading.current_thread():
            self.join(timeout)

    # ------------------------------------------------------------------ thread side
    def run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopped and (self._pauses > 0 or self._owed <= 0):
                        self._cond.wait()
                    if self._stopped:
                        return
                    self._owed -= 1
                    self._busy = True
                start = time.perf_counter()
                try:
                    results = self._learn_fn()
                finally:
                    with self._cond:
                        self._busy = False
                        self.busy_seconds += time.perf_counter() - start
                        self._cond.notify_all()
                with self._cond:
                    self.num_updates += 1
                    self.last_results = results
                    self._cond.notify_all()
        except BaseException as error:  # handed to the driver by raise_if_failed
            with self._cond:
                self.error = error
                self._stopped = True
                self._cond.notify_all()
