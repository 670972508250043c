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

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import numpy as np

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

    @property
    def distance(self) -> float:
        """The mean of the distances as fractions of each hash's bits: what ranks
        matches, best first."""
        distances = self.distances
        return sum(value / ALGORITHMS[name].bits for name, value in distances.items()) / len(
            distances
        )

    @property
    def chance(self) -> float:
        """How likely an unrelated picture's hashes, as random bits, would lie this near
        all at once: the product of each hash's chance of so few bits differing."""
        return math.prod(
            _within(ALGORITHMS[name].bits)[value] for name, value in self.distances.items()
        )


@cache
def _within(bits: int) -> tuple[float, ...]:
    """For each distance d, the chance that two random codes of ``bits`` differ in at
    most d bits."""
    counts = [math.comb(bits, flipped) for flipped in range(bits + 1)]
    return tuple(sum(counts[: distance + 1]) / 2**bits for distance in range(bits + 1))


_QUALITY_BITS = 8  # a tag holds the PDQ quality + 1 (0: none) below its group
_QUALITY = (1 << _QUALITY_BITS) - 1
_BATCH = 50_000
T = TypeVar("T")
# A search's keys, their groups and their distances.
Found = tuple[np.ndarray, np.ndarray, np.ndarray]


class FingerprintStore:
    """Banned fingerprints by key, packed in one ``HammingIndex`` per algorithm, each
    entry tagged with its group, and PDQ's with its quality too: the others' tags, one
    group for a whole imported list, are then held as runs (10M bans: 10 MB less each).

    Held this way a fingerprint of all three hashes costs about 150 bytes, where a
    ``Fingerprint`` object with its dict of hex strings costs about 600 more: the
    difference between a million bans and ten million in a worker's memory. Matchers of
    different rules share one store, each seeing the fingerprints of its own group.
    """

    def __init__(self, radii: Mapping[str, int] | None = None) -> None:
        """``radii``: how far each algorithm's index will mostly be searched (its matchers'
        ``radii``), for its tables' layout."""
        self._indexes = {
            name: HammingIndex(spec.bits, (radii or {}).get(name))
            for name, spec in ALGORITHMS.items()
        }
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: int) -> bool:
        return any(key in index for index in self._indexes.values())

    def nbytes(self) -> int:
        return sum(index.nbytes() for index in self._indexes.values())

    def add_many(self, items: Iterable[tuple[int, Fingerprint]], group: int = 0) -> None:
        """Store fingerprints in ``group``, replacing whatever their keys held."""
        self.extend((key, fingerprint, group) for key, fingerprint in items)

    def extend(self, items: Iterable[tuple[int, Fingerprint, int]]) -> None:
        """Store (key, fingerprint, group)s, replacing whatever their keys held. They are
        read in batches and packed, so that a build's millions of objects need not all
        exist at once."""
        replacing = bool(self._count)
        seen: list[np.ndarray] = []
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
            name: [] for name in self._indexes
        }
        for batch in _batches(items, _BATCH):
            if replacing:
                for key, _, _ in batch:
                    self.remove(key)
            seen.append(np.fromiter((key for key, _, _ in batch), np.int64, len(batch)))
            for name, index in self._indexes.items():
                held = [(key, fp, group) for key, fp, group in batch if name in fp.hashes]
                if held:
                    parts[name].append(
                        (
                            np.fromiter((key for key, _, _ in held), np.int64, len(held)),
                            index.decode([fp.hashes[name] for _, fp, _ in held]),
                            np.fromiter((_tag(g, fp) for _, fp, g in held), np.uint32, len(held)),
                        )
                    )
        if seen:
            self.add_new(parts, len(np.unique(np.concatenate(seen))))

    def add_new(
        self, parts: Mapping[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]], count: int
    ) -> None:
        """Store the codes of ``count`` keys it does not hold: for each algorithm, parts
        of (keys, codes as ``index.decode`` gives them, tags as ``tags`` makes them)."""
        for name, held in parts.items():
            if held:
                keys, codes, tags = (np.concatenate(column) for column in zip(*held, strict=True))
                if name != "pdq":
                    tags &= ~np.uint32(_QUALITY)  # the quality rates the PDQ hash alone
                self._indexes[name].add_arrays(keys, codes, tags)
        self._count += count

    def remove(self, key: int) -> bool:
        """Forget ``key``; whether it was held."""
        held = False
        for index in self._indexes.values():
            if key in index:
                index.remove(key)
                held = True
        self._count -= held
        return held

    def get(self, key: int) -> tuple[Fingerprint, int] | None:
        """The fingerprint held under ``key`` and its group, or None."""
        hashes, group, quality = {}, 0, 0
        for name, index in self._indexes.items():
            found = index.get(key)
            if found is not None:
                hashes[name], tag = found
                group = tag >> _QUALITY_BITS
                if name == "pdq":
                    quality = tag & _QUALITY
        if not hashes:
            return None
        fingerprint = Fingerprint(hashes=hashes, pdq_quality=quality - 1 if quality else None)
        return fingerprint, group

    def search(self, name: str, codes: list[str], radius: int) -> list[Found]:
        """For each code, the keys whose ``name`` hash is within ``radius`` of it, their
        groups and distances: one index query for all the codes."""
        return [
            (keys, tags >> _QUALITY_BITS, distances)
            for keys, tags, distances in self._indexes[name].search_many(codes, radius)
        ]


class SharedSearch:
    """The searches of one store for the matchers of some of its groups: each hash looked
    up once, at the largest radius any of them looks it up at; each matcher takes the keys
    of its own group within its own radius, what its own search would have found."""

    def __init__(self, store: "FingerprintStore", matchers: Iterable["Matcher"]) -> None:
        self._store = store
        self._matchers = list(matchers)
        self._reach: dict[str, int] = {}
        for matcher in self._matchers:
            for name, radius in matcher.radii.items():
                self._reach[name] = max(radius, self._reach.get(name, 0))
        self._found: dict[tuple[str, str], Found] = {}

    def __call__(self, name: str, code: str) -> Found:
        if (name, code) not in self._found:
            self._fetch(name, [code])
        return self._found[(name, code)]

    def prefetch(self, fingerprints: Iterable[Fingerprint]) -> None:
        """Look up every hash of these fingerprints that the matchers will search for, one
        index query per algorithm for all of them (an upload's turns, its views)."""
        wanted: dict[str, dict[str, None]] = {}
        for fingerprint in fingerprints:
            for name in {
                name for matcher in self._matchers for name in matcher.searched(fingerprint)
            }:
                if (name, fingerprint.hashes[name]) not in self._found:
                    wanted.setdefault(name, {})[fingerprint.hashes[name]] = None
        for name, codes in wanted.items():
            self._fetch(name, list(codes))

    def _fetch(self, name: str, codes: list[str]) -> None:
        found = self._store.search(name, codes, self._reach[name])
        self._found.update(((name, code), item) for code, item in zip(codes, found, strict=True))


def search_radii(rule: MatchRule) -> dict[str, int]:
    """The radius each algorithm's index is searched at for ``rule``.

    A group matches only when every hash in it is within its limit, so its candidates are
    found by searching for one of them: the one searched most cheaply, the nearest as a
    share of its bits, unless another group's search already reaches as far in one of them
    (pHash at 10 finds every match of pHash 10 and dHash 6: dHash need then be searched
    only as far as its own group, 4). Each algorithm is searched at the largest limit of
    the groups searched by it.
    """

    def share(limits: dict[str, int], name: str) -> float:
        return limits[name] / ALGORITHMS[name].bits

    chosen = [min(limits, key=lambda name: share(limits, name)) for limits in rule.groups]
    for index, limits in enumerate(rule.groups):
        reach = _reach(rule.groups, chosen, leaving_out=index)
        covered = [name for name in limits if reach.get(name, -1) >= limits[name]]
        if covered:
            chosen[index] = min(covered, key=lambda name: share(limits, name))
    return _reach(rule.groups, chosen)


def _reach(
    groups: tuple[dict[str, int], ...], chosen: list[str], leaving_out: int = -1
) -> dict[str, int]:
    """How far each algorithm is searched when each group is searched by its ``chosen``
    one (but the group ``leaving_out``): the largest limit of the groups searched by it."""
    reach: dict[str, int] = {}
    for index, (limits, name) in enumerate(zip(groups, chosen, strict=True)):
        if index != leaving_out:
            reach[name] = max(limits[name], reach.get(name, 0))
    return reach


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _tag(group: int, fingerprint: Fingerprint) -> int:
    quality = fingerprint.pdq_quality
    return group << _QUALITY_BITS | (0 if quality is None else quality + 1)


def tags(group: int, qualities: np.ndarray) -> np.ndarray:
    """The tags of fingerprints of ``group`` with these PDQ qualities (-1: none)."""
    return (group << _QUALITY_BITS | (qualities.astype(np.int64) + 1)).astype(np.uint32)


class Matcher:
    """Banned fingerprints by key, searched exactly with one index per algorithm.

    A matcher holds its own store, or shares one (``store``) with matchers of other
    rules: it then sees only the fingerprints added to ``group``.
    """

    def __init__(
        self, rule: MatchRule, store: FingerprintStore | None = None, group: int = 0
    ) -> None:
        self.rule = rule
        self._radius = search_radii(rule)
        self._store = store if store is not None else FingerprintStore(self._radius)
        self.group = group

    def __len__(self) -> int:
        """The fingerprints in its store (all groups)."""
        return len(self._store)

    def add(self, key: int, fingerprint: Fingerprint) -> None:
        """Ban ``fingerprint`` under ``key``, replacing whatever the key held."""
        self.add_many([(key, fingerprint)])

    def add_many(self, items: list[tuple[int, Fingerprint]]) -> None:
        """``add`` for many at once (a rebuild)."""
        self._store.add_many(items, self.group)

    def remove(self, key: int) -> None:
        """Unban ``key``; a key that is not there is ignored."""
        self._store.remove(key)

    def fingerprint(self, key: int) -> Fingerprint | None:
        found = self._store.get(key)
        return found[0] if found is not None and found[1] == self.group else None

    @property
    def radii(self) -> dict[str, int]:
        """The radius each algorithm's index is searched at."""
        return dict(self._radius)

    def match(self, fingerprint: Fingerprint, search: SharedSearch | None = None) -> list[Match]:
        """Every banned fingerprint the rule matches, best first.

        Each group's candidates are found through one of its algorithms' indexes (see
        ``__init__``), which finds every candidate the group could accept; the rule is then
        applied to the full distances, so the result is the same as checking every banned
        fingerprint. ``search``: the searches shared with the matchers of other groups of
        the store.
        Best first is by the mean of the distances as fractions of each hash's bits (the
        mean, not the sum, so that a match on one pasted hash is not favoured over a
        closer match on all three), then by key.
        """
        search = search or SharedSearch(self._store, [self])
        candidates: set[int] = set()
        for name in self.searched(fingerprint):
            keys, groups, apart = search(name, fingerprint.hashes[name])
            candidates.update(keys[(groups == self.group) & (apart <= self._radius[name])].tolist())
        matches = []
        for key in candidates:
            banned = self._store.get(key)[0]  # type: ignore[index]
            distances = fingerprint.distance(banned)
            group = self._matching_group(distances, fingerprint, banned)
            if group is not None:
                matches.append(Match(key=key, distances=distances, rule=_describe(group)))
        return sorted(matches, key=lambda match: (match.distance, match.key))

    def match_many(self, fingerprints: list[Fingerprint]) -> list[list[Match]]:
        """``match`` for each fingerprint, their index lookups made together."""
        search = SharedSearch(self._store, [self])
        search.prefetch(fingerprints)
        return [self.match(fingerprint, search) for fingerprint in fingerprints]

    def searched(self, fingerprint: Fingerprint) -> list[str]:
        """The algorithms whose index ``match`` looks the fingerprint up in."""
        return [
            name
            for name in self._radius
            if name in fingerprint.hashes and self._votes(name, fingerprint)
        ]

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


def low_detail_rows(
    codes: Mapping[str, tuple[np.ndarray, np.ndarray]], qualities: np.ndarray, pdq_min_quality: int
) -> np.ndarray:
    """``is_low_detail`` of many fingerprints at once, as columns: for each algorithm,
    which rows have that hash (a mask) and those rows' codes as ``HammingIndex.decode``
    gives them; the rows' PDQ qualities (-1: none). A row with no hash is low detail."""
    rows = len(qualities)
    hashed = np.zeros(rows, dtype=bool)
    balanced = np.ones(rows, dtype=bool)
    for name, (present, held) in codes.items():
        bits = ALGORITHMS[name].bits
        ones = np.bitwise_count(held).sum(axis=1)
        balanced[present] &= (bits // 8 <= ones) & (ones <= bits - bits // 8)
        hashed |= present
    pdq = codes["pdq"][0] if "pdq" in codes else np.zeros(rows, dtype=bool)
    rated = pdq & (qualities >= 0)
    return ~hashed | np.where(rated, qualities < pdq_min_quality, ~balanced)


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
