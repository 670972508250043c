"""Template helpers for the admin's front page."""

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from moderation import selectors
from moderation.models import AuditEvent

register = template.Library()


@register.simple_tag
def dashboard() -> dict[str, object]:
    return selectors.dashboard()


@register.simple_tag
def recent_events(count: int = 10) -> list[AuditEvent]:
    return list(AuditEvent.objects.select_related("actor")[:count])


@register.simple_tag
def day_bars(per_day: list[tuple[object, int]], width: int = 600, height: int = 120) -> SafeString:
    """A bar chart of counts per day as inline SVG: no script, no outside resource."""
    most = max((count for _, count in per_day), default=0) or 1
    step = width / max(1, len(per_day))
    bars = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}"><title>{}: {}</title></rect>',
        (
            (
                f"{index * step + 1:.1f}",
                f"{height - count / most * (height - 14):.1f}",
                f"{max(1.0, step - 2):.1f}",
                f"{count / most * (height - 14):.1f}",
                day,
                count,
            )
            for index, (day, count) in enumerate(per_day)
        ),
    )
    return format_html(
        '<svg class="hg-chart" role="img" aria-label="quarantined or held per day" '
        'width="{}" height="{}" viewBox="0 0 {} {}"><g fill="#b23">{}</g>'
        '<text x="2" y="11" font-size="11" fill="currentColor">most: {}</text></svg>',
        width,
        height,
        width,
        height,
        bars,
        most if most > 1 or any(count for _, count in per_day) else 0,
    )
