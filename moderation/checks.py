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
def pipeline_settings_check(**kwargs: object) -> list[CheckMessage]:
    """Refuse to start with pipeline settings that would let files through unchecked."""
    problems: list[CheckMessage] = []
    if settings.HASHGUARD_UNCHECKABLE not in ("hold", "leave"):
        problems.append(
            Error(
                f"HASHGUARD_UNCHECKABLE must be hold or leave, not "
                f"{settings.HASHGUARD_UNCHECKABLE!r}.",
                hint="hold (the default) quarantines files that cannot be checked.",
                id="hashguard.E002",
            )
        )
    if settings.HASHGUARD_IMAGE_REVEAL not in ("click", "hover") or not (
        0 <= settings.HASHGUARD_IMAGE_BLUR <= 60
    ):
        problems.append(
            Error(
                f"HASHGUARD_IMAGE_REVEAL must be click or hover, not "
                f"{settings.HASHGUARD_IMAGE_REVEAL!r}, and HASHGUARD_IMAGE_BLUR from 0 to 60 "
                f"pixels, not {settings.HASHGUARD_IMAGE_BLUR}.",
                hint="Unset them for the defaults: a blur of 24 pixels, revealed by a click.",
                id="hashguard.E006",
            )
        )
    if settings.HASHGUARD_REVIEW_BATCH < 1 or settings.HASHGUARD_REVIEW_LEASE_SECONDS < 30:
        problems.append(
            Error(
                "HASHGUARD_REVIEW_BATCH must be at least 1 and HASHGUARD_REVIEW_LEASE_SECONDS "
                "at least 30.",
                hint="Unset them for the defaults: 20 uploads for 300 seconds.",
                id="hashguard.E007",
            )
        )
    if settings.HASHGUARD_REQUEUE_SECONDS <= 0:
        problems.append(
            Error(
                f"HASHGUARD_REQUEUE_SECONDS must be positive, not "
                f"{settings.HASHGUARD_REQUEUE_SECONDS:g}.",
                hint="Unset it for the default of 60 seconds.",
                id="hashguard.E004",
            )
        )
    return problems


@register()
def metrics_allow_check(**kwargs: object) -> list[CheckMessage]:
    """Refuse to start with a HASHGUARD_METRICS_ALLOW entry that is no address."""
    from moderation.api import metrics_networks

    try:
        metrics_networks()
    except ValueError as exc:
        return [
            Error(
                f"HASHGUARD_METRICS_ALLOW is not a list of addresses or networks: {exc}",
                hint="Give addresses or networks separated by commas, e.g. 10.0.0.5,10.1.0.0/16.",
                id="hashguard.E005",
            )
        ]
    return []
