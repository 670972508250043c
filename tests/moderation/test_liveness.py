"""When a worker counts as stalled: the judge on its own, then real worker processes
whose pool processes are stopped or killed."""

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from moderation import liveness, selectors
from moderation.liveness import Judge, Snapshot
from moderation.models import Upload, WorkerHeartbeat
from tests.images import photo
from tests.moderation.processes import ROOT, Stack, database_url, wait_for
from tests.moderation.test_pipeline import decided


def snapshot(waiting: dict[str, float], running: set[str], done: int = 0) -> Snapshot:
    return Snapshot(waiting=waiting, running=running, done=done, pool_size=2)


def test_an_idle_worker_is_never_stalled() -> None:
    judge = Judge(start_seconds=30, progress_seconds=330)
    assert judge.stall(snapshot({}, set()), now=0) is None
    assert judge.stall(snapshot({}, set()), now=10_000) is None


def test_a_message_a_free_pool_process_does_not_start_is_a_stall() -> None:
    judge = Judge(start_seconds=30, progress_seconds=330)
    assert judge.stall(snapshot({"a": 0}, set()), now=1) is None
    assert judge.stall(snapshot({"a": 0}, set()), now=20) is None
    assert "has not started" in judge.stall(snapshot({"a": 0}, set()), now=40)


def test_busy_pool_processes_are_given_the_task_time_limit() -> None:
    judge = Judge(start_seconds=30, progress_seconds=330)
    # Both pool processes run long tasks while a third message waits: no free process.
    busy = snapshot({"c": 0}, {"a", "b"})
    assert judge.stall(busy, now=0) is None
    assert judge.stall(busy, now=300) is None
    assert "no task started or finished" in judge.stall(busy, now=340)


def test_progress_resets_the_clock() -> None:
    judge = Judge(start_seconds=30, progress_seconds=330)
    assert judge.stall(snapshot({"b": 0}, {"a"}), now=0) is None
    # A task finished and the waiting one started: progress.
    assert judge.stall(snapshot({}, {"b"}, done=1), now=300) is None
    assert judge.stall(snapshot({}, {"b"}, done=1), now=600) is None
    assert judge.stall(snapshot({}, {"b"}, done=1), now=640) is not None


def test_children_of_lists_child_processes() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in liveness.children_of(os.getpid())
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def stack(transactional_db, stores: Path, redis_broker: str) -> Stack:
    stack = Stack(
        stores,
        database_url=database_url(),
        broker_url=redis_broker,
        HASHGUARD_STALL_SECONDS="6",
        HASHGUARD_REQUEUE_SECONDS="10",
    )
    yield stack
    stack.stop()


def pool_processes(worker_pid: int) -> list[int]:
    return wait_for(
        lambda: liveness.children_of(worker_pid), timeout=30, what="the pool processes"
    )


@pytest.mark.pipeline
def test_a_worker_whose_pool_hangs_restarts_and_nothing_is_lost(stack: Stack) -> None:
    media = stack.data_dir / "media"
    worker = stack.worker(concurrency=2)
    stack.watcher()
    # Both pool processes hang (stopped, as a process blocked on a lock never wakes).
    children = pool_processes(worker.popen.pid)
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    photo("coffee").save(media / "a.jpg", "JPEG")

    wait_for(lambda: worker.popen.poll() is not None, timeout=90, what="the worker to exit")
    assert worker.popen.returncode == liveness.EXIT_CODE, worker.log()
    assert "worker stalled" in worker.log()
    for pid in children:  # killed with it, not left behind
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    beat = WorkerHeartbeat.objects.get(pid=worker.popen.pid)
    assert beat.stalled_since and "has not started" in beat.stall
    assert any("stalled" in line for line in selectors.workers_in_trouble())
    listed = stack.manage("uploads")
    assert "warning: worker" in listed.stderr and "stalled" in listed.stderr

    # Its supervisor starts it again; the upload it held is decided.
    stack.processes.remove(worker)
    stack.worker(concurrency=2)
    upload = wait_for(lambda: decided("a.jpg"), timeout=120, what="a.jpg decided")
    assert upload.state == Upload.State.CLEAN, stack.logs()


@pytest.mark.pipeline
def test_killing_both_pool_processes_loses_nothing(stack: Stack) -> None:
    """kill -9 of both pool processes: billiard's replacements may hang on a lock; either
    way, every file is decided, restarting the worker as its supervisor would."""
    media = stack.data_dir / "media"
    worker = stack.worker(concurrency=2)
    stack.watcher()
    for pid in pool_processes(worker.popen.pid):
        os.kill(pid, signal.SIGKILL)
    for index, name in enumerate(("coffee", "rocket", "chelsea")):
        photo(name).save(media / f"{index}.jpg", "JPEG")

    def all_decided() -> bool:
        nonlocal worker
        if worker.popen.poll() is not None:  # as systemd's Restart=always would
            stack.processes.remove(worker)
            worker = stack.worker(concurrency=2)
        return all(decided(f"{index}.jpg") for index in range(3))

    wait_for(all_decided, timeout=150, what="every file decided")
    assert Upload.objects.count() == 3


def test_systemd_hears_the_worker(tmp_path: Path, monkeypatch) -> None:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        liveness.sd_notify("WATCHDOG=1")
        assert server.recv(64) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    liveness.sd_notify("WATCHDOG=1")  # not run by systemd: nothing to tell, no error


UNITS = sorted((ROOT / "config" / "systemd").glob("*.service"))


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
def test_systemd_rates_each_unit_ok_or_better(unit: Path) -> None:
    rated = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    last = rated.stdout.strip().splitlines()[-1]
    exposure = float(last.split(":")[1].split()[0])
    assert exposure <= 4.9, last  # 4.9 and under is "OK", under 2 "SAFE"


def test_a_long_import_is_not_judged_by_the_uploads_time_limit() -> None:
    judge = Judge(start_seconds=30, progress_seconds=330)
    importing = Snapshot(waiting={}, running=set(), done=0, pool_size=2, long_running=1)
    assert judge.stall(importing, now=0) is None
    assert judge.stall(importing, now=3600) is None
    # Both pool processes importing while an upload waits: no free process, no stall.
    both = Snapshot(waiting={"u": 0}, running=set(), done=0, pool_size=2, long_running=2)
    assert judge.stall(both, now=3600) is None


def test_uploads_that_hang_beside_an_import_are_still_a_stall() -> None:
    judge = Judge(start_seconds=30, progress_seconds=330)
    hung = Snapshot(waiting={}, running={"u"}, done=0, pool_size=2, long_running=1)
    assert judge.stall(hung, now=0) is None
    assert "no task started or finished" in judge.stall(hung, now=400)
