"""Pong-RAM benchmark: env steps, learner updates and wall time until the greedy score of whole games reaches +18.

    python benchmarks/pong_ram.py                                     # seed 0, up to 10M env steps / 48 h
    python benchmarks/pong_ram.py --num-cpus 16 --eval-games 2 --csv pong.csv

Meant for long runs on bigger machines. Trains the config of tuned_examples/pong-ram-muzero.yaml
(`Pong-ramNoFrameskip-v4`: RAM normalised to [0, 1], 4 frames per action, no-op starts, episode_life). Training
episodes end at every lost point (episode_life), so the score here is measured on WHOLE games: every --eval-every env
steps, --eval-games games (default 1: a game is thousands of searched steps) with greedy search (no root noise,
temperature 0, fixed reset seeds) on an env built by the package's env creator (rllib_muzero.envs.make_env_creator)
from the example's env and env_config with `episode_life` False: the same observation wrappers as training, and the
example's 40,000-frame limit per game. Env steps are agent steps (4 frames each).

The example's own RLlib evaluation (evaluation_interval 20: 2 whole games inside algo.train()) is switched off, since
it would be timed as training and duplicates this evaluation; --config '{"evaluation_interval": 20}' turns it back on.
Evaluation time is excluded from the training wall time (train_s) and reported separately. --csv appends every
evaluation (the learning curve) to a CSV file as it happens. --eval-max-steps cuts evaluation games short: for smoke
tests only. The loop is benchmarks/_target_return.py.
"""

from __future__ import annotations

from _target_return import creator_eval_env, example_path, long_run_main, long_run_parser

EXAMPLE = example_path("pong-ram-muzero.yaml")
eval_env = creator_eval_env(episode_life=False)
# The example's own RLlib evaluation would be timed as training (see above): off unless --config sets it again.
BASE_OVERRIDES = {"evaluation_interval": None}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = long_run_parser(__doc__, example=EXAMPLE, target=18.0, eval_games=1, eval_every=200_000,
                             max_env_steps=10_000_000, max_minutes=48 * 60.0)
    return long_run_main(parser.parse_args(argv), eval_env, BASE_OVERRIDES)


if __name__ == "__main__":
    main()
