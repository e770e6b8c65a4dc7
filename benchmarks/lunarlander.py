"""LunarLander benchmark: env steps, learner updates and wall time until the greedy mean reaches 200.

    python benchmarks/lunarlander.py                                  # seed 0, up to 5M env steps / 24 h
    python benchmarks/lunarlander.py --seeds 0 1 2 --num-cpus 16 --csv lunarlander.csv

Meant for long runs on bigger machines. Trains the config of tuned_examples/lunarlander-muzero.yaml (env
`LunarLander-v2`, built as gymnasium's `LunarLander-v3`); every --eval-every env steps plays --eval-games whole
games of `LunarLander-v3` (its own 1000-step limit) with greedy search (no root noise, temperature 0, fixed reset
seeds), built by the package's env creator from the example's env and env_config. Evaluation time is excluded from
the training wall time (train_s) and reported separately. --csv appends every evaluation (the learning curve) to a
CSV file as it happens. The loop is benchmarks/_target_return.py.
"""

from __future__ import annotations

from _target_return import creator_eval_env, example_path, long_run_main, long_run_parser

EXAMPLE = example_path("lunarlander-muzero.yaml")
eval_env = creator_eval_env()  # the example's env_config is empty: plain LunarLander-v3


def main(argv: list[str] | None = None) -> list[dict]:
    parser = long_run_parser(__doc__, example=EXAMPLE, target=200.0, eval_games=10, eval_every=25_000,
                             max_env_steps=5_000_000, max_minutes=24 * 60.0)
    return long_run_main(parser.parse_args(argv), eval_env)


if __name__ == "__main__":
    main()
