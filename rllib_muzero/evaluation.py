"""Deprecated alias of :mod:`rllib_muzero.play`, this module's former name: import from ``rllib_muzero.play``.

The engine that plays games was called ``evaluation`` beside ``evaluate`` (the API of ``rllib-muzero evaluate``);
nothing in the two names said which was which. Kept so that ``from rllib_muzero.evaluation import play_games`` (and
the other names below) still works; it warns with a ``DeprecationWarning``.
"""

import warnings

from rllib_muzero.play import (
    ACTING_MODES,
    EvaluationError,
    EvaluationOptions,
    EvaluationResult,
    GameTrace,
    ObservationPipeline,
    most_visited_path,
    play_games,
    play_traced_games,
    run_games,
    subtree_heights,
)

__all__ = [
    "ACTING_MODES",
    "EvaluationError",
    "EvaluationOptions",
    "EvaluationResult",
    "GameTrace",
    "ObservationPipeline",
    "most_visited_path",
    "play_games",
    "play_traced_games",
    "run_games",
    "subtree_heights",
]

warnings.warn("rllib_muzero.evaluation is deprecated: import from rllib_muzero.play (same names)",
              DeprecationWarning, stacklevel=2)
