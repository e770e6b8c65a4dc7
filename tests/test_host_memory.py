"""keep_freed_host_memory: glibc's malloc keeps what a learner update frees, so the next update takes no page faults."""

import json
import platform
import subprocess
import sys
import textwrap

import pytest

import rllib_muzero.algorithm as algorithm_module
from rllib_muzero.host_memory import keep_freed_host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A learner update's pattern, reduced: ~10 MB of tensors under the 128 KiB mmap threshold, freed together, so glibc's
# default trim hands the heap's top back to the kernel and the next round faults every page in again.
_ROUNDS = textwrap.dedent("""
    import json, resource, torch
    from rllib_muzero.host_memory import keep_freed_host_memory

    def faults_per_round(rounds=6):
        out = []
        for _ in range(rounds):
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            tensors = [torch.ones(25_000) for _ in range(100)]  # 100 x 100 kB, written
            del tensors
            out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
        return out

    before = faults_per_round()
    kept = keep_freed_host_memory()
    after = faults_per_round()
    print(json.dumps({"before": before, "kept": kept, "after": after}))
""")


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_freed_memory_is_reused_without_page_faults():
    # A fresh process: the thresholds are process-wide, and this one's heap has a history.
    out = subprocess.run([sys.executable, "-c", _ROUNDS], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kept"] is True
    # The premise: with malloc's defaults every round faults its ~10 MB back in (2,400 pages of 4 KiB).
    assert min(result["before"][2:]) > 1000, result
    # After: the first round grows the kept heap once, the rest reuse it.
    assert max(result["after"][2:]) < 50, result


@pytest.mark.skipif(GLIBC, reason="the no-op is for C libraries other than glibc")
def test_no_op_without_glibc():
    assert keep_freed_host_memory() is False


@pytest.mark.integration
def test_the_algorithm_applies_it_unless_told_not_to(ray_session, monkeypatch):
    from tests.test_algorithm import tiny_config

    algo = tiny_config().build_algo()
    try:
        assert algo.host_memory_kept is GLIBC
    finally:
        algo.stop()

    def refuse() -> bool:
        raise AssertionError("keep_freed_host_memory=False must leave malloc alone")

    monkeypatch.setattr(algorithm_module, "keep_freed_host_memory", refuse)
    algo = tiny_config(keep_freed_host_memory=False).build_algo()
    try:
        assert algo.host_memory_kept is False
    finally:
        algo.stop()
