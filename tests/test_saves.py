"""Crash-safe checkpoint saves: a crash at any instant of a save leaves a complete checkpoint, old or new.

The protocol (rllib_muzero/algorithm.py, ``replace_checkpoint_dir``) is tested on plain directories first, with a
fake writer and a simulated kill at every file-system operation of a save (and of the save after it); then once
with a real MuZero checkpoint through the loaders (``MuZero.from_checkpoint``, ``restore``, ``rllib-muzero
evaluate``'s lookup).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rllib_muzero import algorithm as algorithm_module
from rllib_muzero.algorithm import (
    clean_interrupted_saves,
    recover_checkpoint_dir,
    recover_checkpoints_in,
    replace_checkpoint_dir,
)

FILES = ("algorithm_state.pkl", "rllib_checkpoint.json", "policy_state.pkl")


class Killed(BaseException):
    """The process died here: raised by every file-system operation from the crash on (no handler gets to act)."""


def write_version(version: int):
    def write(directory: str) -> None:
        for name in FILES:
            Path(directory, name).write_text(str(version))
    return write


def version_of(path: str | Path) -> int:
    """The checkpoint's version; fails unless it is complete (every file, one version)."""
    versions = {Path(path, name).read_text() for name in FILES}
    assert len(versions) == 1, f"mixed checkpoint at {path}: {versions}"
    return int(versions.pop())


def entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


class FileSystemKill:
    """Counts the protocol's file-system operations (os.rename, shutil.rmtree) and kills the "process" at
    operation ``kill_at`` (1-based; None: never). A killed rmtree deletes one file first (a deletion cut short); a
    killed rename does not happen. After the kill every operation raises again."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kill_at: int | None):
        self.kill_at, self.count, self.dead = kill_at, 0, False
        real_rename, real_rmtree = os.rename, shutil.rmtree

        def op(real):
            def wrapped(path, *args, **kwargs):
                if self.dead:
                    raise Killed()
                self.count += 1
                if self.count == self.kill_at:
                    self.dead = True
                    if real is real_rmtree:
                        first = next((f for f in Path(path).rglob("*") if f.is_file()), None)
                        if first is not None:
                            first.unlink()
                    raise Killed()
                return real(path, *args, **kwargs)
            return wrapped

        monkeypatch.setattr(os, "rename", op(real_rename))
        monkeypatch.setattr(shutil, "rmtree", op(real_rmtree))


def crashing_writer(version: int, kill: FileSystemKill):
    """Writes one file of the new checkpoint, then the process dies (a kill while writing)."""
    def write(directory: str) -> None:
        Path(directory, FILES[0]).write_text(str(version))
        kill.dead = True
        raise Killed()
    return write


def save(final: Path, version: int, monkeypatch: pytest.MonkeyPatch, kill_at: int | None | str) -> bool:
    """One save of ``version`` into ``final``, killed at operation ``kill_at`` ("write": while writing).
    Returns whether it was killed; the patches are undone (the next "process" starts clean)."""
    with monkeypatch.context() as m:
        kill = FileSystemKill(m, None if kill_at == "write" else kill_at)
        writer = crashing_writer(version, kill) if kill_at == "write" else write_version(version)
        try:
            replace_checkpoint_dir(final, writer)
        except Killed:
            return True
    return False


def count_operations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool) -> int:
    final = tmp_path / "count" / "ckpt"
    if existing:
        replace_checkpoint_dir(final, write_version(1))
    with monkeypatch.context() as m:
        kill = FileSystemKill(m, None)
        replace_checkpoint_dir(final, write_version(2))
        return kill.count


def test_a_save_replaces_the_checkpoint_and_leaves_nothing_beside_it(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()  # Trainable.save creates the directory before save_checkpoint
    replace_checkpoint_dir(final, write_version(1))
    assert version_of(final) == 1
    replace_checkpoint_dir(final, write_version(2))
    assert version_of(final) == 2
    assert entries(tmp_path) == ["ckpt"]


def test_a_failing_writer_keeps_the_old_checkpoint_and_no_leftover(tmp_path):
    final = tmp_path / "ckpt"
    replace_checkpoint_dir(final, write_version(1))

    def disk_full(directory: str) -> None:
        Path(directory, FILES[0]).write_text("2")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_checkpoint_dir(final, disk_full)
    assert version_of(final) == 1
    assert entries(tmp_path) == ["ckpt"]


@pytest.mark.parametrize("existing", [True, False], ids=["over-a-checkpoint", "first-save"])
def test_a_kill_at_any_instant_leaves_a_complete_checkpoint(tmp_path, monkeypatch, existing):
    """Every operation of a save is a possible kill: over a checkpoint, 4 renames and 1 rmtree (steps 2-5 of the
    protocol); a first save (into the empty directory Trainable.save makes), 2 renames."""
    num_ops = count_operations(tmp_path, monkeypatch, existing)
    assert num_ops == (5 if existing else 2)
    for kill_at in ["write", *range(1, num_ops + 1)]:
        parent = tmp_path / f"kill-{kill_at}"
        final = parent / "ckpt"
        if existing:
            replace_checkpoint_dir(final, write_version(1))
        else:
            final.mkdir(parents=True)  # as Trainable.save leaves it
        assert save(final, 2, monkeypatch, kill_at), kill_at
        # A reader: the path holds a complete checkpoint, or recovery puts one back (never a mixed one).
        readable = recover_checkpoint_dir(final)
        assert readable == str(final)
        if existing:
            assert version_of(final) in {1, 2}, kill_at
        elif kill_at in ("write", 1):  # the new checkpoint not yet known complete: still the empty directory
            assert not any(final.iterdir())
        else:
            assert version_of(final) == 2
        # The next save cleans every leftover of the killed one.
        replace_checkpoint_dir(final, write_version(3))
        assert version_of(final) == 3
        assert entries(parent) == ["ckpt"], kill_at


def test_two_saves_killed_in_a_row_at_any_instants_still_leave_a_complete_checkpoint(tmp_path, monkeypatch):
    """The second save starts from each state the first kill left (its cleanup and recovery are killed too)."""
    num_ops = count_operations(tmp_path, monkeypatch, existing=True)
    points = ["write", *range(1, num_ops + 1)]
    for first in points:
        for second in ["write", *range(1, num_ops + 4)]:  # the second save may also clean up and recover first
            parent = tmp_path / f"kill-{first}-{second}"
            final = parent / "ckpt"
            replace_checkpoint_dir(final, write_version(1))
            save(final, 2, monkeypatch, first)
            between = version_of(recover_checkpoint_dir(final))
            save(final, 3, monkeypatch, second)
            assert version_of(recover_checkpoint_dir(final)) in {between, 3}, (first, second)
            replace_checkpoint_dir(final, write_version(4))
            assert version_of(final) == 4
            assert entries(parent) == ["ckpt"], (first, second)


def test_the_newest_complete_checkpoint_is_recovered(tmp_path, monkeypatch):
    """Killed between moving the old checkpoint aside and moving the new one in: the new one is complete, and is the
    one recovered."""
    final = tmp_path / "ckpt"
    replace_checkpoint_dir(final, write_version(1))
    assert save(final, 2, monkeypatch, kill_at=3)  # partial->ready, final->previous, [ready->final]
    assert not final.exists()
    assert sorted(name.split("-")[0] for name in entries(tmp_path)) == [".ckpt.previous", ".ckpt.ready"]
    recover_checkpoints_in(tmp_path)  # what the evaluate command's lookup runs on a trial directory
    assert version_of(final) == 2


def test_a_reader_recovering_while_the_writer_is_between_its_renames(tmp_path, monkeypatch):
    """A concurrent reader finds the path missing and recovers the new checkpoint itself; the writer finishes."""
    final = tmp_path / "ckpt"
    replace_checkpoint_dir(final, write_version(1))
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 3:  # the writer is about to move the new checkpoint in: a reader comes first
            monkeypatch.setattr(os, "rename", real_rename)
            assert version_of(recover_checkpoint_dir(final)) == 2
            monkeypatch.setattr(os, "rename", rename)
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    replace_checkpoint_dir(final, write_version(2))
    monkeypatch.undo()
    assert version_of(final) == 2
    assert entries(tmp_path) == ["ckpt"]


def test_recovery_reads_in_place_where_it_cannot_rename(tmp_path, monkeypatch):
    final = tmp_path / "ckpt"
    replace_checkpoint_dir(final, write_version(1))
    assert save(final, 2, monkeypatch, kill_at=3)

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "rename", read_only)
    readable = recover_checkpoint_dir(final)
    assert Path(readable).name.startswith(".ckpt.ready-") and version_of(readable) == 2


def _leftover(parent: Path, kind: str, host: str, pid: int, version: int = 9) -> Path:
    path = parent / f".ckpt.{kind}-{host}-{pid}-0123abcd"
    path.mkdir()
    write_version(version)(str(path))
    return path


def test_only_the_leftovers_of_gone_writers_are_removed(tmp_path):
    final = tmp_path / "ckpt"
    replace_checkpoint_dir(final, write_version(1))
    host = algorithm_module._HOST_TAG
    other_host = f"{(int(host, 16) + 1) % 0x10000:04x}"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)
    live_pid = os.getppid()  # pytest's parent: alive, not this process
    kept = [_leftover(tmp_path, "partial", host, live_pid), _leftover(tmp_path, "ready", other_host, dead_pid)]
    removed = [_leftover(tmp_path, "partial", host, dead_pid), _leftover(tmp_path, "previous", host, os.getpid()),
               _leftover(tmp_path, "trash", host, dead_pid)]
    old_style = tmp_path / ".ckpt.partial-k2_x9abc"  # written by the protocol's earlier version (no owner)
    old_style.mkdir()
    clean_interrupted_saves(tmp_path)
    assert all(p.exists() for p in kept)
    assert not any(p.exists() for p in removed) and not old_style.exists()
    assert version_of(final) == 1


def test_the_only_copy_is_never_removed(tmp_path):
    """A gone writer's complete sibling with no checkpoint at its name is put back, not deleted."""
    parent = tmp_path / "trial"
    parent.mkdir()
    _leftover(parent, "previous", algorithm_module._HOST_TAG, os.getpid(), version=5)
    clean_interrupted_saves(parent)
    assert entries(parent) == ["ckpt"] and version_of(parent / "ckpt") == 5


# ---- with a real MuZero checkpoint -----------------------------------------------------------------------------------


def killed_save(algo, target: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int) -> None:
    with monkeypatch.context() as m:
        FileSystemKill(m, kill_at)
        with pytest.raises(Killed):
            algo.save(str(target))


@pytest.mark.integration
def test_an_algorithm_save_killed_between_its_renames_is_recovered_by_every_loader(ray_session, tmp_path,
                                                                                      monkeypatch):
    from rllib_muzero import MuZero
    from rllib_muzero.checkpoints import find_checkpoints, load_algorithm
    from tests.test_algorithm import tiny_config

    target = tmp_path / "ckpt"
    algo = tiny_config().build_algo()
    try:
        algo.train()
        algo.save(str(target))
        # Killed between moving the old checkpoint aside and moving the new one in (ops: partial->ready,
        # final->previous, ready->final): nothing at the path, and `rllib-muzero evaluate`'s lookup recovers the new.
        algo.train()
        killed_save(algo, target, monkeypatch, kill_at=3)
        assert not target.exists()
        assert find_checkpoints([str(target)]) == [("ckpt", str(target))]
        evaluated = load_algorithm(str(target))
        try:
            assert evaluated.get_policy().num_grad_updates == algo.get_policy().num_grad_updates
        finally:
            evaluated.stop()
        algo.save(str(target))  # cleans what the killed save left
        assert entries(tmp_path) == ["ckpt"]

        # The same through MuZero.from_checkpoint.
        algo.train()
        killed_save(algo, target, monkeypatch, kill_at=3)
        restored = MuZero.from_checkpoint(str(target))
        try:
            assert restored.get_policy().num_grad_updates == algo.get_policy().num_grad_updates
            algo.save(str(target))
            assert entries(tmp_path) == ["ckpt"]
            # A first save killed before its checkpoint is in place (ops: partial->ready, ready->final): restore
            # recovers it.
            shutil.rmtree(target)
            algo.train()
            killed_save(algo, target, monkeypatch, kill_at=2)
            assert target.is_dir() and not any(target.iterdir())  # as Trainable.save made it
            restored.restore(str(target))
            assert restored.get_policy().num_grad_updates == algo.get_policy().num_grad_updates
        finally:
            restored.stop()
        algo.save(str(target))
        assert entries(tmp_path) == ["ckpt"]
    finally:
        algo.stop()
