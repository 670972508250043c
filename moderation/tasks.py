import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError

logger = logging.getLogger(__name__)

# Faults that may pass: the database restarting or locked, a filesystem hiccup.
TRANSIENT_ERRORS = (DatabaseError, OSError)
# Backoff of 2, 4, ... capped at 2 minutes: about 10 minutes of retries in all.
MAX_RETRIES = 8


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES)
def process_upload(self, upload_id: int) -> None:  # noqa: ANN001
    from moderation import services

    try:
        services.upload_process(upload_id=upload_id)
    except SoftTimeLimitExceeded:
        services.upload_fail(
            upload_id=upload_id,
            code="timeout",
            message="Checking this file took longer than HASHGUARD_TASK_TIME_LIMIT.",
        )
    except TRANSIENT_ERRORS as exc:
        if self.request.retries >= MAX_RETRIES:
            logger.exception("upload %s failed %s times", upload_id, MAX_RETRIES + 1)
            services.upload_fail(
                upload_id=upload_id,
                code="internal",
                message=f"Failed {MAX_RETRIES + 1} times, the last with: {exc}. "
                "Fix the cause, then use Check again on the upload.",
            )
            return
        raise self.retry(exc=exc, countdown=min(120, 2 ** (self.request.retries + 1))) from exc
    except Exception as exc:
        # A fault in hashguard itself: record it rather than retry the same failure forever.
        logger.exception("upload %s could not be processed", upload_id)
        services.upload_fail(
            upload_id=upload_id, code="internal", message=f"Internal error: {exc!r}"
        )
