"""Each worker's in-memory index of the active banned fingerprints.

Before every image a worker reads one short value, the blocklist version; when it differs
from the one its index was built from, the index is rebuilt. A fingerprint added or
deactivated in the admin therefore takes effect in every worker at its next file.
"""

import threading
from dataclasses import dataclass

from django.conf import settings

from hashes.algorithms import Fingerprint
from hashes.matching import DEFAULT_RULE_CONFIG, Match, Matcher, MatchRule
from moderation.models import BannedFingerprint, BlocklistVersion


@dataclass(frozen=True)
class Blocklist:
    version: str
    matcher: Matcher
    fingerprints: dict[int, Fingerprint]
    by_sha256: dict[str, list[int]]

    def match(self, frames: list[Fingerprint], sha256: str) -> dict[int, tuple[int, Match]]:
        """The best match per banned fingerprint, as {key: (frame, match)}."""
        found: dict[int, tuple[int, Match]] = {}
        for key in self.by_sha256.get(sha256, []):
            distances = frames[0].distance(self.fingerprints[key]) if frames else {}
            found[key] = (0, Match(key=key, distances=distances, rule="sha256"))
        for frame, fingerprint in enumerate(frames):
            for match in self.matcher.match(fingerprint):
                if match.key not in found:
                    found[match.key] = (frame, match)
        return found


def match_rule() -> MatchRule:
    return MatchRule.from_config(settings.HASHGUARD_MATCH_RULE or DEFAULT_RULE_CONFIG)


def current_version() -> str:
    return BlocklistVersion.objects.values_list("token", flat=True).first() or ""


def build_blocklist() -> Blocklist:
    # Read the version before the rows: a change committed in between makes the next
    # check see a newer version and rebuild, never miss it.
    version = current_version()
    matcher = Matcher(match_rule())
    fingerprints: dict[int, Fingerprint] = {}
    by_sha256: dict[str, list[int]] = {}
    rows = BannedFingerprint.objects.filter(active=True).values_list(
        "id", "phash", "dhash", "pdq", "pdq_quality", "sha256"
    )
    for key, phash, dhash, pdq, pdq_quality, sha256 in rows.iterator(chunk_size=10_000):
        hashes = {
            name: value
            for name, value in (("phash", phash), ("dhash", dhash), ("pdq", pdq))
            if value
        }
        if hashes:
            fingerprint = Fingerprint(hashes=hashes, pdq_quality=pdq_quality if pdq else None)
            matcher.add(key, fingerprint)
            fingerprints[key] = fingerprint
        if sha256:
            by_sha256.setdefault(sha256, []).append(key)
            fingerprints.setdefault(key, Fingerprint(hashes={}, pdq_quality=None))
    return Blocklist(version, matcher, fingerprints, by_sha256)


_lock = threading.Lock()
_current: Blocklist | None = None


def current_blocklist() -> Blocklist:
    """This process's blocklist, rebuilt if the banned fingerprints changed since."""
    global _current
    version = current_version()
    with _lock:
        if _current is None or _current.version != version:
            _current = build_blocklist()
        return _current
