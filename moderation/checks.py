from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register()
def match_rule_check(**kwargs: object) -> list[CheckMessage]:
    """Refuse to start with a HASHGUARD_MATCH_RULE the workers could not use."""
    from moderation.blocklist import match_rule

    try:
        match_rule()
    except (ValueError, TypeError, AttributeError) as exc:
        return [
            Error(
                f"HASHGUARD_MATCH_RULE is not a usable match rule: {exc}",
                hint=f"Fix or unset it; the current value is {settings.HASHGUARD_MATCH_RULE!r}.",
                id="hashguard.E001",
            )
        ]
    return []


@register()
def detect_config_check(**kwargs: object) -> list[CheckMessage]:
    """Refuse to start with HASHGUARD_DETECT settings the workers could not use."""
    from moderation.blocklist import detect_config

    try:
        detect_config()
    except (ValueError, TypeError, AttributeError) as exc:
        return [
            Error(
                f"HASHGUARD_DETECT is not usable: {exc}",
                hint=f"Fix or unset it; the current value is {settings.HASHGUARD_DETECT!r}.",
                id="hashguard.E003",
            )
        ]
    return []


@register()
def requeue_after_time_limit_check(**kwargs: object) -> list[CheckMessage]:
    """A task still running must not look stalled and be handed to a second worker."""
    if settings.HASHGUARD_REQUEUE_SECONDS <= settings.CELERY_TASK_TIME_LIMIT:
        return [
            Error(
                f"HASHGUARD_REQUEUE_SECONDS ({settings.HASHGUARD_REQUEUE_SECONDS:g}) must be "
                f"longer than a task may run ({settings.CELERY_TASK_TIME_LIMIT} s).",
                hint="Raise HASHGUARD_REQUEUE_SECONDS or lower HASHGUARD_TASK_TIME_LIMIT.",
                id="hashguard.E002",
            )
        ]
    return []
