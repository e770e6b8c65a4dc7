"""Shared fixtures: one Ray session for the whole test run (integration tests only ask for it)."""

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray
    import torch

    # The driver searches and learns in tiny ops: one thread avoids oversubscribing a 2-core machine.
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024)
    yield ray
    ray.shutdown()
