"""Runnable examples of rllib-muzero inside ordinary RLlib pipelines (see examples/README.md).

A regular package so that class paths such as ``examples.custom_env.CorridorEnv`` resolve from the repository root.
"""
