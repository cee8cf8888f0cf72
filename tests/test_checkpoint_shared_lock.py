"""The lock file beside a checkpoint (zoracle._checkpoint._shared_lock) left by a saver killed mid-save
whose pid this process has again (a container restarted after an OOM kill)."""
import os
import threading

import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="a holder of this machine is told by its pid on POSIX")


def _lock(path):
    from zoracle import _checkpoint

    return path.parent / (_checkpoint._tmp_prefix(str(path)) + "lock")


def test_a_lock_left_by_an_earlier_process_of_this_pid_is_removed_at_once(tmp_path, monkeypatch):
    """A container restarted after a kill mid-save runs as the same pid (1, or the entrypoint's) on
    the same host name: the lock file its killed run left named this process, which was taken as a
    live saver of this machine, so every save of the run waited LOCK_WAIT_S (60 s), went on unlocked
    and left the file for the next. No thread of this process holds it: it is removed at once."""
    from zoracle import _checkpoint

    monkeypatch.setattr(_checkpoint, "LOCK_WAIT_S", 1.0)
    path = tmp_path / "run.npz"
    lock = _lock(path)
    lock.write_text(f"{_checkpoint._host_tag()} {os.getpid()}\n")
    for _ in range(2):
        with _checkpoint.writer_lock(str(path)) as held:
            assert held, "the save went on unlocked after waiting LOCK_WAIT_S"
        assert not lock.exists()


def test_a_lock_another_thread_of_this_process_holds_is_waited_for(tmp_path, monkeypatch):
    """Two threads of one process saving one checkpoint: the second waits for the first's lock file
    (it names this process too) rather than take it as stale."""
    from zoracle import _checkpoint

    monkeypatch.setattr(_checkpoint, "LOCK_WAIT_S", 30.0)
    path = tmp_path / "run.npz"
    lock = _lock(path)
    inside, release, order = threading.Event(), threading.Event(), []

    def first():
        with _checkpoint._shared_lock(str(path)) as held:
            assert held
            order.append("first in")
            inside.set()
            release.wait(30)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(30)
    second = threading.Thread(target=lambda: _second(path, order))
    second.start()
    second.join(0.5)
    assert second.is_alive() and lock.exists()  # waiting, the first's file in place
    release.set()
    t.join(30)
    second.join(30)
    assert order == ["first in", "first out", "second in"]
    assert not lock.exists()


def _second(path, order):
    from zoracle import _checkpoint

    with _checkpoint._shared_lock(str(path)) as held:
        order.append("second in" if held else "second unlocked")
