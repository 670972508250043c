"""Deciding whether an upload matches a banned fingerprint.

The rule is a list of groups, each a set of ``{algorithm: max_distance}`` limits. A banned
fingerprint matches when, for any one group, every algorithm in that group is present on
both sides and within its limit. The defaults, ``DEFAULT_RULE_CONFIG``, were checked with
``benchmarks/distances.py`` on 32 real photos and wallpapers, each resized 0.5x and 2x,
recompressed as JPEG q30 and WebP, re-encoded as PNG and brightened or darkened by 10%:

- ``pdq <= 31``: Meta's recommended PDQ threshold. Distinct images were never closer
  than 84 of 256 bits, but halving fine textures (brick, printed page) moved PDQ by up to
  60, so the 64-bit groups below are needed as well.
- ``phash <= 10 and dhash <= 6``: one 64-bit hash alone at distance 10 has too many chance
  matches among real photos, so both must agree. dHash is the one that separates: the two
  stereo shots of one motorcycle scene are only phash 4 apart but dhash 9, while the 41
  edits that PDQ missed or could not vote on moved dHash by at most 2 (one exception,
  below). 6 leaves room on both sides; at ``dhash <= 10`` the stereo pair matched.
- ``phash <= 2`` and ``dhash <= 4``: either hash alone this close is a near-identical
  copy; these also let a single pasted pHash or dHash be banned on its own. pHash
  distances are always even (every pHash has exactly 32 ones, split at the median), so 2
  is the step below the stereo pair's 4; no two distinct images were closer than dhash 6.
- ``pdq_min_quality = 50``: a PDQ quality below 50 means a flat, low-detail image whose
  hash is unreliable (Meta's guidance), so PDQ does not vote when either side's quality is
  below it. A fingerprint without a quality (a pasted PDQ hash) is taken as it comes.

With these, no two distinct images matched and 223 of 224 edits did; the miss is a
near-flat wallpaper (PDQ quality 25) at JPEG q30, which moved pHash by 10 and dHash by 11.

Later, the evaluation harness (``manage.py evaluate``) against 1,396 innocent images found
16 of them within ``dhash <= 4`` of three banned images whose dHash is a repeated row
(``e0e0e0e0e0e0e0e0``, a smooth vertical gradient) or all ones (a printed page), though
their PDQ quality is 100. A pHash or dHash now votes only when it is ``informative``.

That left a striped wallpaper (dHash ``e0e0...``, uninformative) unmatched after plain
JPEG, brightness and contrast edits, which moved its PDQ by 34 to 58 and its pHash by 4 to
10. Hence ``pdq <= 60 and phash <= 10``: of the 3.56 million pairs of the 2,669 distinct
innocent images (``benchmarks/fetch_innocent.py``), none was within even ``pdq <= 70 and
phash <= 10``, and the stereo motorcycle pair is PDQ 84 apart.

Against 120 banned images of that set (``--distractors`` aside), a blue clip-art pane
matched a photo of a green sign at ``dhash <= 4``, turned upside down, though their pHash
was 20 and their PDQ 126 apart, as far as unrelated pictures are. Hence ``veto``: a group's
match does not count when another hash that both sides have and that may vote is further
apart than this share of its bits (0.375: 24 of 64, 96 of 256). Copies are never that far
on a hash that votes: their 90th percentiles are well under it for whole-picture edits.
"""

from dataclasses import dataclass

from hashes.algorithms import ALGORITHMS, Fingerprint
from hashes.index import HammingIndex


@dataclass(frozen=True)
class MatchRule:
    """Which hash distances make a match; the defaults are the calibrated rule, and every
    rule is checked here, however it is built."""

    groups: tuple[dict[str, int], ...] = (
        {"pdq": 31},
        {"pdq": 60, "phash": 10},
        {"phash": 10, "dhash": 6},
        {"phash": 2},
        {"dhash": 4},
    )
    pdq_min_quality: int = 50
    veto: float = 0.375  # 1: no veto; see the module's notes

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("A match rule needs at least one group of {algorithm: distance}.")
        for group in self.groups:
            if not isinstance(group, dict) or not group:
                raise ValueError(
                    f"Each group must be a non-empty mapping of algorithm to maximum "
                    f"distance, not {group!r}."
                )
            for name, limit in group.items():
                if name not in ALGORITHMS:
                    raise ValueError(
                        f"Unknown algorithm {name!r} in group {group!r}; "
                        f"expected one of {', '.join(ALGORITHMS)}."
                    )
                bits = ALGORITHMS[name].bits
                if type(limit) is not int or not 0 <= limit <= bits:
                    raise ValueError(
                        f"The maximum distance for {name} must be a whole number from 0 to "
                        f"{bits}, not {limit!r}."
                    )
        if type(self.pdq_min_quality) is not int or not 0 <= self.pdq_min_quality <= 100:
            raise ValueError(
                f"pdq_min_quality must be a whole number from 0 to 100, "
                f"not {self.pdq_min_quality!r}."
            )
        if type(self.veto) not in (int, float) or not 0 < self.veto <= 1:
            raise ValueError(
                f"veto must be a share of a hash's bits above 0 and at most 1, not {self.veto!r}."
            )

    @classmethod
    def from_config(cls, config: dict) -> "MatchRule":
        """Build a rule from settings shaped like ``DEFAULT_RULE_CONFIG``."""
        unknown = set(config) - {"groups", "pdq_min_quality", "veto"}
        if unknown:
            raise ValueError(
                f"Unknown match rule settings {sorted(unknown)}; "
                "expected 'groups' and optionally 'pdq_min_quality' and 'veto'."
            )
        groups = config.get("groups")
        if not isinstance(groups, list | tuple):
            raise ValueError(
                f"'groups' must be a list of {{algorithm: distance}} mappings, not {groups!r}."
            )
        return cls(
            groups=tuple(groups),
            pdq_min_quality=config.get("pdq_min_quality", cls.pdq_min_quality),
            veto=config.get("veto", cls.veto),
        )

    def as_config(self) -> dict:
        """The rule as HASHGUARD_MATCH_RULE writes it."""
        return {
            "groups": [dict(group) for group in self.groups],
            "pdq_min_quality": self.pdq_min_quality,
            "veto": self.veto,
        }


DEFAULT_RULE_CONFIG: dict = MatchRule().as_config()


@dataclass(frozen=True)
class Match:
    key: int
    distances: dict[str, int]
    rule: str


class Matcher:
    """Banned fingerprints by key, searched exactly with one index per algorithm."""

    def __init__(self, rule: MatchRule) -> None:
        self.rule = rule
        self._radius: dict[str, int] = {}
        for group in rule.groups:
            for name, limit in group.items():
                self._radius[name] = max(limit, self._radius.get(name, 0))
        self._indexes = {name: HammingIndex(ALGORITHMS[name].bits) for name in self._radius}
        self._fingerprints: dict[int, Fingerprint] = {}

    def __len__(self) -> int:
        return len(self._fingerprints)

    def add(self, key: int, fingerprint: Fingerprint) -> None:
        """Ban ``fingerprint`` under ``key``, replacing whatever the key held."""
        self.remove(key)
        self._fingerprints[key] = fingerprint
        for name, index in self._indexes.items():
            if name in fingerprint.hashes:
                index.add(key, fingerprint.hashes[name])

    def remove(self, key: int) -> None:
        """Unban ``key``; a key that is not there is ignored."""
        if self._fingerprints.pop(key, None) is not None:
            for index in self._indexes.values():
                index.remove(key)

    def fingerprint(self, key: int) -> Fingerprint | None:
        return self._fingerprints.get(key)

    def match(self, fingerprint: Fingerprint) -> list[Match]:
        """Every banned fingerprint the rule matches, best first.

        Each algorithm's index is searched at the largest distance any group allows it,
        which finds every candidate a group could accept; the rule is then applied to the
        full distances, so the result is the same as checking every banned fingerprint.
        Best first is by the mean of the distances as fractions of each hash's bits (the
        mean, not the sum, so that a match on one pasted hash is not favoured over a
        closer match on all three), then by key.
        """
        candidates: set[int] = set()
        for name, index in self._indexes.items():
            if name in fingerprint.hashes and self._votes(name, fingerprint):
                hits = index.query(fingerprint.hashes[name], self._radius[name])
                candidates.update(key for key, _ in hits)
        matches = []
        for key in candidates:
            banned = self._fingerprints[key]
            distances = fingerprint.distance(banned)
            group = self._matching_group(distances, fingerprint, banned)
            if group is not None:
                matches.append(Match(key=key, distances=distances, rule=_describe(group)))
        return sorted(matches, key=lambda match: (_score(match.distances), match.key))

    def _matching_group(
        self, distances: dict[str, int], upload: Fingerprint, banned: Fingerprint
    ) -> dict[str, int] | None:
        voting = [
            name for name in distances if self._votes(name, upload) and self._votes(name, banned)
        ]
        if any(distances[name] > self.rule.veto * ALGORITHMS[name].bits for name in voting):
            return None
        for group in self.rule.groups:
            if all(name in voting and distances[name] <= limit for name, limit in group.items()):
                return group
        return None

    def _votes(self, name: str, fingerprint: Fingerprint) -> bool:
        if name == "pdq":
            return (
                fingerprint.pdq_quality is None
                or fingerprint.pdq_quality >= self.rule.pdq_min_quality
            )
        return informative(fingerprint.hashes[name]) if name in fingerprint.hashes else True


def informative(code: str) -> bool:
    """Whether a 64-bit hash carries enough pattern to vote on its own.

    A smooth gradient's dHash is one row repeated (``e0e0e0e0e0e0e0e0``) and a flat
    image's is all zeros or all ones, whatever the picture's detail elsewhere; such a hash
    lies within a few bits of thousands of unrelated smooth images. It needs at least an
    eighth of its bits set and unset, and three different rows.
    """
    value = int(code, 16)
    ones = value.bit_count()
    rows = {(value >> shift) & 0xFF for shift in range(0, 64, 8)}
    return 8 <= ones <= 56 and len(rows) >= 3


def _describe(group: dict[str, int]) -> str:
    return "+".join(f"{name}<={limit}" for name, limit in group.items())


def _score(distances: dict[str, int]) -> float:
    return sum(distance / ALGORITHMS[name].bits for name, distance in distances.items()) / len(
        distances
    )
