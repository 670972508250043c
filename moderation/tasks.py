import errno
import logging

from celery import current_app, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError

from moderation.models import ErrorCode

logger = logging.getLogger(__name__)

QUEUE = "celery"
# Backoff of 2, 4, ... capped at 2 minutes: about 10 minutes of retries in all.
MAX_RETRIES = 8
# Filesystem faults that may pass: a network filesystem or disk hiccup, a full disk.
_TRANSIENT_ERRNOS = {
    errno.EIO,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ENOSPC,
    errno.ESTALE,
    errno.ETIMEDOUT,
    errno.EINTR,
    errno.ENOMEM,
    errno.EMFILE,
    errno.ENFILE,
}


def is_transient(exc: BaseException) -> bool:
    """Whether a fault may pass by itself (the database restarting or locked, a
    filesystem hiccup), so that trying again later is worth it."""
    if isinstance(exc, DatabaseError):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES)
def process_upload(self, upload_id: int) -> None:  # noqa: ANN001
    from moderation import services

    try:
        services.upload_process(upload_id=upload_id)
    except SoftTimeLimitExceeded:
        services.upload_fail(
            upload_id=upload_id,
            code=ErrorCode.TIMEOUT,
            message="Checking this file took longer than HASHGUARD_TASK_TIME_LIMIT.",
        )
    except Exception as exc:
        if not is_transient(exc):
            # A fault that retrying cannot fix: record it rather than fail again and again.
            logger.exception("upload %s could not be processed", upload_id)
            services.upload_fail(
                upload_id=upload_id, code=ErrorCode.INTERNAL, message=f"Internal error: {exc!r}"
            )
            return
        if self.request.retries >= MAX_RETRIES:
            logger.exception("upload %s failed %s times", upload_id, MAX_RETRIES + 1)
            services.upload_fail(
                upload_id=upload_id,
                code=ErrorCode.INTERNAL,
                message=f"Failed {MAX_RETRIES + 1} times, the last with: {exc}. "
                "Fix the cause, then use Check again on the upload.",
            )
            return
        raise self.retry(exc=exc, countdown=min(120, 2 ** (self.request.retries + 1))) from exc


# A long list takes minutes, not the seconds an upload does.
@shared_task(acks_late=True, reject_on_worker_lost=True, soft_time_limit=7200, time_limit=7260)
def run_import(job_id: int) -> None:
    from moderation import services

    services.import_job_run(job_id=job_id)


@shared_task(acks_late=True, reject_on_worker_lost=True, soft_time_limit=86400, time_limit=86460)
def run_retro_check(job_id: int) -> None:
    from moderation import services

    services.retro_check_run(job_id=job_id)


def waiting_in_queue() -> int | None:
    """How many messages wait in the broker's queue, or None if it cannot be asked."""
    try:
        with current_app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            return int(connection.default_channel._size(QUEUE))
    except Exception as exc:  # the broker is down or its transport cannot count
        logger.debug("could not count the queue: %s", exc)
        return None


def broker_problem() -> str | None:
    """Why the broker cannot be reached, or None when it can."""
    try:
        with current_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # any transport's failure to connect
        return f"the task queue's broker is unavailable: {exc}"
    return None
