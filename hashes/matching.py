"""Deciding whether an upload matches a banned fingerprint.

The rule is a list of groups, each a set of ``{algorithm: max_distance}`` limits. A banned
fingerprint matches when, for any one group, every algorithm in that group is present on
both sides and within its limit. The default groups, and why:

- ``pdq <= 31``: Meta's recommended PDQ threshold.
- ``pdq <= 60 and phash <= 10``: fine stripes and textures, whose PDQ moves further; no
  innocent pair came within ``pdq <= 70 and phash <= 10``.
- ``phash <= 10 and dhash <= 6``: the edits PDQ misses; one 64-bit hash alone at 10 has
  too many chance matches, and two shots of one scene are dHash 9 apart.
- ``phash <= 2``, ``dhash <= 4``: near-identical copies, and bans pasted as one hash.
- ``pdq_min_quality = 50``: below it PDQ does not vote (a flat image's hash is unreliable,
  Meta's guidance); a pHash or dHash votes only when it is informative (not a repeated
  row, not near all ones or zeros).
- ``veto = 0.375``: a group's match does not count when another hash both sides have,
  and that may vote, is as far apart as unrelated pictures (3/8 of its bits).

How these were measured, with the figures: docs/calibration.md.
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

    def with_limits(self, limits: "dict[str, int]", *, tighten: bool = False) -> "MatchRule":
        """The rule with each algorithm's distance in ``limits`` put in place of that
        algorithm's distance in every group naming it (a bank's own limits); with
        ``tighten``, a limit only lowers a group's distance, never raises it."""
        if not limits:
            return self

        def limit_of(name: str, limit: int) -> int:
            own = limits.get(name, limit)
            return min(own, limit) if tighten else own

        groups = tuple(
            {name: limit_of(name, limit) for name, limit in group.items()} for group in self.groups
        )
        return MatchRule(groups=groups, pdq_min_quality=self.pdq_min_quality, veto=self.veto)

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
        # A group matches only when every hash in it is within its limit, so its candidates
        # are found by searching for one of them: the one searched most cheaply, the
        # nearest as a share of its bits. Each algorithm is searched at the largest limit
        # of the groups searched by it.
        self._radius: dict[str, int] = {}
        for group in rule.groups:
            name = min(group, key=lambda name: group[name] / ALGORITHMS[name].bits)
            self._radius[name] = max(group[name], self._radius.get(name, 0))
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

    def add_many(self, items: list[tuple[int, Fingerprint]]) -> None:
        """``add`` for many at once (a rebuild)."""
        for key, _ in items:
            self.remove(key)
        self._fingerprints.update(items)
        for name, index in self._indexes.items():
            pairs = [(key, fp.hashes[name]) for key, fp in items if name in fp.hashes]
            index.add_many([key for key, _ in pairs], [code for _, code in pairs])

    def remove(self, key: int) -> None:
        """Unban ``key``; a key that is not there is ignored."""
        if self._fingerprints.pop(key, None) is not None:
            for index in self._indexes.values():
                index.remove(key)

    def fingerprint(self, key: int) -> Fingerprint | None:
        return self._fingerprints.get(key)

    def match(self, fingerprint: Fingerprint) -> list[Match]:
        """Every banned fingerprint the rule matches, best first.

        Each group's candidates are found through one of its algorithms' indexes (see
        ``__init__``), which finds every candidate the group could accept; the rule is then
        applied to the full distances, so the result is the same as checking every banned
        fingerprint.
        Best first is by the mean of the distances as fractions of each hash's bits (the
        mean, not the sum, so that a match on one pasted hash is not favoured over a
        closer match on all three), then by key.
        """
        candidates: set[int] = set()
        for name, radius in self._radius.items():
            if name in fingerprint.hashes and self._votes(name, fingerprint):
                hits = self._indexes[name].query(fingerprint.hashes[name], radius)
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
            return _pdq_trusted(fingerprint, self.rule.pdq_min_quality) is not False
        return informative(fingerprint.hashes[name]) if name in fingerprint.hashes else True


# --- too plain to match -----------------------------------------------------------------
# A flat colour, gradient or near-blank picture hashes like every other smooth picture:
# matching it approximately would match innocent ones. These are the rules for that.


def _pdq_trusted(fingerprint: Fingerprint, pdq_min_quality: int) -> bool | None:
    """Whether PDQ's own quality (the gradient detail it was computed from) is at least
    the minimum, Meta's guidance for trusting the hash; None without a quality (pasted)."""
    if fingerprint.pdq_quality is None or "pdq" not in fingerprint.hashes:
        return None
    return fingerprint.pdq_quality >= pdq_min_quality


def _balanced(code: str, bits: int) -> bool:
    """At least an eighth of the hash's bits set and an eighth unset: a flat picture's
    hashes are nearly all zeros (or ones)."""
    ones = int(code, 16).bit_count()
    return bits // 8 <= ones <= bits - bits // 8


def informative(code: str) -> bool:
    """Whether a 64-bit hash carries enough pattern to vote on its own.

    A smooth gradient's dHash is one row repeated (``e0e0e0e0e0e0e0e0``) and a flat
    image's is all zeros or all ones, whatever the picture's detail elsewhere; such a hash
    lies within a few bits of thousands of unrelated smooth images. It must be balanced
    and have three different rows.
    """
    value = int(code, 16)
    rows = {(value >> shift) & 0xFF for shift in range(0, 64, 8)}
    return _balanced(code, 64) and len(rows) >= 3


def is_low_detail(fingerprint: Fingerprint, pdq_min_quality: int) -> bool:
    """Whether a banned fingerprint is too plain to match anything but exact copies: its
    PDQ quality is below the minimum, or, without one (pasted hashes), any of its hashes
    is unbalanced."""
    trusted = _pdq_trusted(fingerprint, pdq_min_quality)
    if trusted is not None:
        return not trusted
    return not all(
        _balanced(code, ALGORITHMS[name].bits) for name, code in fingerprint.hashes.items()
    )


def _describe(group: dict[str, int]) -> str:
    return "+".join(f"{name}<={limit}" for name, limit in group.items())


def _score(distances: dict[str, int]) -> float:
    return sum(distance / ALGORITHMS[name].bits for name, distance in distances.items()) / len(
        distances
    )
