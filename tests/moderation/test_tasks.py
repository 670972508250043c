"""The worker's task, branch by branch: it runs the real service; faults are injected
where the service would meet them."""

from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import OperationalError

from moderation import services, tasks
from moderation.models import Upload
from tests.images import encode, photo

pytestmark = pytest.mark.django_db
State = Upload.State


@pytest.fixture
def upload(stores: Path) -> Upload:
    path = stores / "media" / "a.jpg"
    path.write_bytes(encode(photo("coffee"), "JPEG"))
    return services.upload_register(path=path)[0]


def failing(monkeypatch, fault: BaseException, times: int) -> list[int]:
    """The real service, failing with fault the first `times` calls."""
    real = services.upload_process
    calls: list[int] = []

    def upload_process(*, upload_id: int) -> Upload | None:
        calls.append(upload_id)
        if len(calls) <= times:
            raise fault
        return real(upload_id=upload_id)

    monkeypatch.setattr(services, "upload_process", upload_process)
    return calls


def run(upload: Upload) -> Upload:
    tasks.process_upload.apply(args=[upload.pk])
    return Upload.objects.get(pk=upload.pk)


def test_success(upload: Upload) -> None:
    assert run(upload).state == State.CLEAN


def test_a_transient_fault_is_retried(upload: Upload, monkeypatch) -> None:
    calls = failing(monkeypatch, OperationalError("the database restarted"), times=2)
    assert run(upload).state == State.CLEAN
    assert len(calls) == 3


def test_retries_run_out_and_the_file_is_held(upload: Upload, monkeypatch) -> None:
    calls = failing(monkeypatch, OperationalError("the database is gone"), times=100)
    held = run(upload)
    assert len(calls) == tasks.MAX_RETRIES + 1
    assert (held.state, held.error_code) == (State.HELD, "internal")
    assert f"Failed {tasks.MAX_RETRIES + 1} times" in held.error


def test_the_time_limit_holds_the_file(upload: Upload, monkeypatch) -> None:
    calls = failing(monkeypatch, SoftTimeLimitExceeded(), times=1)
    held = run(upload)
    assert len(calls) == 1
    assert (held.state, held.error_code) == (State.HELD, "timeout")


def test_a_fault_retrying_cannot_fix_is_recorded_at_once(upload: Upload, monkeypatch) -> None:
    calls = failing(monkeypatch, PermissionError(13, "Permission denied"), times=100)
    held = run(upload)
    assert len(calls) == 1
    assert (held.state, held.error_code) == (State.HELD, "internal")
    assert "Permission denied" in held.error


@pytest.mark.parametrize(("cores", "concurrency", "threads"), [(8, 4, 2), (2, 2, 1), (2, 8, 1)])
def test_a_pool_process_keeps_opencv_and_blas_to_its_share_of_the_cores(
    monkeypatch, cores: int, concurrency: int, threads: int
) -> None:
    import multiprocessing
    import os
    from types import SimpleNamespace

    import cv2
    from threadpoolctl import threadpool_limits

    from config import celery

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    before = cv2.getNumThreads()
    restore = threadpool_limits(None)  # the limits as they are, to put back
    try:
        # In the main process, before the pool processes fork: they inherit the limits.
        celery.share_cores(sender=SimpleNamespace(concurrency=concurrency))
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(threads_in_this_process) == (threads, {threads})
    finally:
        cv2.setNumThreads(before)
        restore.restore_original_limits()


def threads_in_this_process() -> tuple[int, set[int]]:
    """OpenCV's threads and BLAS's (each library's)."""
    import cv2
    from threadpoolctl import threadpool_info

    blas = {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    return cv2.getNumThreads(), blas
