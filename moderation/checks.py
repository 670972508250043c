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
