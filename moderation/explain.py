"""Why an upload matched, in plain words for the moderator, with the engineering detail
kept for a click: what the review pages show of each match."""

import re
from dataclasses import dataclass, field

from hashes.detect import TURNS
from moderation.models import Match

# CSS that turns an upload back to the way the banned picture is: the inverse of the turn
# the hash stage found (hashes.detect.TURNS names how the upload was turned).
UNDO = {
    "as_is": "",
    "turned_right": "rotate(-90deg)",
    "turned_180": "rotate(180deg)",
    "turned_left": "rotate(90deg)",
    "flipped": "scaleY(-1)",
    "mirrored": "scaleX(-1)",
    "transposed": "rotate(90deg) scaleY(-1)",
    "transversed": "rotate(90deg) scaleX(-1)",
}
_WORDS = {name: words for name, words, _ in TURNS}
_LIMIT = re.compile(r"([a-z]+)<=(\d+)")


@dataclass(frozen=True)
class Explanation:
    headline: str  # plain words first
    near_limit: list[str] = field(default_factory=list)  # "pdq 29 (limit 31)"
    undo: str = ""  # CSS transform turning the upload back
    box: tuple[float, float, float, float] | None = None  # left, top, width, height in %


def _area(box: list[float]) -> float:
    left, top, right, bottom = box
    return max(0.0, min(right, 1) - max(left, 0)) * max(0.0, min(bottom, 1) - max(top, 0))


def near_limit(rule: str, distances: dict[str, int]) -> list[str]:
    """The distances within a few bits (a tenth of the limit, at least one) of the limit of
    the rule that matched: a match right on the edge deserves a second look."""
    found = []
    for name, limit_text in _LIMIT.findall(rule):
        limit = int(limit_text)
        distance = distances.get(name)
        if distance is not None and limit - distance < max(1, round(limit * 0.1)) + 1:
            found.append(f"{name} {distance} (limit {limit})")
    return found


def explain(match: Match) -> Explanation:
    placement = match.placement or {}
    turn = placement.get("turn") or "as_is"
    box = placement.get("box")
    rotation = float(placement.get("rotation") or 0)
    outline = (
        (box[0] * 100, box[1] * 100, (box[2] - box[0]) * 100, (box[3] - box[1]) * 100)
        if box
        else None
    )
    if match.stage == Match.Stage.EXACT:
        return Explanation("exact copy: the same file")
    if match.stage == Match.Stage.MODERATOR:
        return Explanation("flagged by a moderator")
    close = near_limit(match.rule, match.distances) if match.stage == Match.Stage.HASH else []
    if box:
        turned = f", turned {rotation:.0f}°" if abs(rotation) >= 0.5 else ""
        kind = " (one panel of a collage or screenshot)" if "panel" in match.variant else ""
        return Explanation(
            f"partial: the banned picture fills {_area(box):.0%} of the upload{turned}{kind}",
            close,
            box=outline,
        )
    if match.stage == Match.Stage.LOCAL:
        return Explanation("edited: cropped, stretched or retouched", close)
    if turn != "as_is":
        return Explanation(f"edited: {_WORDS.get(turn, turn)}", close, undo=UNDO.get(turn, ""))
    if match.distances.get("pdq", 0) <= 31:
        return Explanation("near-identical: resized or recompressed", close)
    return Explanation("edited: recoloured, retouched or with text added", close)
