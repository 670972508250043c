"""Which banned pictures share many local features with an upload: the second stage's
candidates, found by an index of every banned picture's keypoints rather than guessed.

A banned picture is filed under the *words* of its strongest ORB descriptors (INDEXED of
each scale it was found at). A word is WORD_BITS of a descriptor's 256 bits, at positions
drawn once for all, and each of WORD_TABLES tables takes its own bits: two descriptors of
one corner, a few bits apart after resizing and recompression, often share a word in some
table, where two unrelated ones do far less often (bit-sampling locality-sensitive
hashing).
An upload's descriptors vote for the pictures filed under their words, one vote per
descriptor and picture; a word that many pictures share (a flat patch, a letter) says
nothing and is skipped, and a word the upload itself repeats (the corners of a pattern,
of a texture) votes once: else a picture holding it once gets a vote from every repeat.

A copy pasted into a corner of another picture, or one tile of a collage, gets votes from
its own part of the upload only, while the look-alikes of the picture around it get theirs
from the rest; so pictures are ranked in each region of the upload (the whole of it, its
quarters, its centre) and the best of every region are candidates in turn.

Adds and removes apply in place: new pictures go to a small sorted run searched beside
the main one and merged into it when it grows; a removed picture's entries stop voting
at once and are dropped at the next merge.
"""

from collections.abc import Iterable, Sequence

import numpy as np

from hashes.index import distinct, pack_pairs
from hashes.local import LocalFeatures

# Each ban's words are stored with it (BannedFingerprint.words): a change to these, or to
# the bits drawn, needs the stored words emptied and `manage.py rehash`.
WORD_TABLES = 2
WORD_BITS = 24
INDEXED = 200
# Votes a picture needs from one region to be a candidate: it keeps out pictures sharing a
# handful of words; among the rest the ranking decides (docs/calibration.md).
MIN_VOTES = 6
# A word filed under more than this many entries, or a 1/_COMMON_SHARE of all of them at
# a larger size, is too common to vote.
_COMMON = 64
_COMMON_SHARE = 8192
# Entries added since the last merge, searched apart until there are this many, or a
# sixteenth of the main run: a merge rewrites the main run.
_RECENT = 1 << 16
# A table's directory (see _Table) has a slot for every word once that costs no more than
# the byte it spares each entry (from 2**26 entries a table; 100k pictures file 76M).
# Short of that it has at most one slot for 64 entries, a sixteenth of their bytes, and
# at least 2**this.
_MIN_DIRECTORY = WORD_BITS - 8
# Removed pictures whose entries are kept (not voting) until there are this many, or an
# eighth of the pictures held.
_DEAD = 1024
_POSITIONS = (
    np.random.default_rng(20261201)
    .permutation(256)[: WORD_TABLES * WORD_BITS]
    .reshape(WORD_TABLES, WORD_BITS)
)
_WEIGHTS = np.left_shift(np.uint32(1), np.arange(WORD_BITS, dtype=np.uint32))
# The regions of an upload pictures are ranked in, as (left, top, right, bottom) fractions.
Region = tuple[float, float, float, float]
REGIONS: tuple[Region, ...] = (
    (0.0, 0.0, 1.0, 1.0),
    (0.0, 0.0, 0.5, 0.5),
    (0.5, 0.0, 1.0, 0.5),
    (0.0, 0.5, 0.5, 1.0),
    (0.5, 0.5, 1.0, 1.0),
    (0.25, 0.25, 0.75, 0.75),
)


def words(descriptors: np.ndarray) -> np.ndarray:
    """The (WORD_TABLES, n) uint32 words of (n, 32) uint8 ORB descriptors."""
    bits = np.unpackbits(np.asarray(descriptors, np.uint8).reshape(-1, 32), axis=1)
    return np.stack([bits[:, positions].astype(np.uint32) @ _WEIGHTS for positions in _POSITIONS])


def indexed_words(features: LocalFeatures) -> np.ndarray:
    """The words a banned picture is filed under: those of the first INDEXED descriptors
    (the strongest, spread over the picture) of each scale its features were found at."""
    scales = features.scales or (len(features.descriptors),)
    starts = np.cumsum((0, *scales[:-1]))
    chosen = [
        np.arange(start, start + min(count, INDEXED))
        for start, count in zip(starts.tolist(), scales, strict=True)
    ]
    return words(features.descriptors[np.concatenate(chosen)])


def filed_words(features: LocalFeatures) -> tuple[np.ndarray, np.ndarray | None]:
    """The words a banned picture is filed under, as it is and mirrored (None: its
    features were not found mirrored)."""
    mirrored = features.mirrored
    return indexed_words(features), indexed_words(mirrored) if mirrored is not None else None


def words_to_bytes(found: np.ndarray) -> bytes:
    return np.ascontiguousarray(found, dtype="<u4").tobytes()


def words_from_bytes(data: bytes | memoryview) -> np.ndarray | None:
    """Stored words, or None where they are not whole (written with other settings)."""
    found = np.frombuffer(data, dtype="<u4")
    if len(found) % WORD_TABLES:
        return None
    return found.astype(np.uint32).reshape(WORD_TABLES, -1)


Run = tuple[np.ndarray, np.ndarray]  # words and their slots


def _directory_bits(entries: int) -> int:
    """The bits of a word a table's directory holds a slot for, at ``entries`` entries."""
    if entries * np.dtype(np.uint8).itemsize >= (1 << WORD_BITS) * np.dtype(np.uint32).itemsize:
        return WORD_BITS
    return max(_MIN_DIRECTORY, (entries // 64).bit_length() - 1)


def _entries(ordered: Sequence[Run], new: Run | None = None) -> np.ndarray:
    """Runs of entries, those ``ordered`` already in order and a ``new`` one in any, as
    one run of 64-bit integers, word above slot, in order: by word, and a word's by slot,
    the order they were filed in, since slots only grow.

    The new run is sorted by ``pack_pairs``'s SIMD sort, then all merged by numpy's
    stable sort, which finds runs in order and merges them (40M entries and 4.5M: 0.1 s,
    a SIMD sort of all of them 0.3 s), into one array: fresh memory costs more than the
    work. Words sorted apart from their slots, and runs merged by ``insert``, cost 100k
    pictures' build 25 s, not 7."""
    runs = [*ordered, *([new] if new is not None else [])]
    entries = np.empty(sum(len(slots) for _, slots in runs), np.uint64)
    at = 0
    for found, slots in runs:
        part = entries[at : at + len(slots)]
        part[:] = found
        pack_pairs(part, slots)
        at += len(slots)
    if new is not None:
        entries[at - len(new[1]) :].sort()
    entries.sort(kind="stable")
    return entries


class _Table:
    """One table's entries, sorted by word, in two runs: the main one packed, and a small
    one of those added since the last merge, kept whole.

    In the main run, a word's top ``bits`` bits are its place in a directory of offsets
    (``starts``), and only the rest of it (``tails``, a byte) is kept with each entry,
    found by a binary search of its bucket. The directory has a slot for every word once
    it costs no more than the tails it replaces (``_directory_bits``): a word's entries
    are then where its slot says, with nothing to search."""

    def __init__(self) -> None:
        self.bits = _MIN_DIRECTORY
        self.starts = np.zeros((1 << self.bits) + 1, np.uint32)
        self.tails = np.zeros(0, np.uint8)
        self.slots = np.zeros(0, np.uint32)
        self.recent_words = np.zeros(0, np.uint32)
        self.recent_slots = np.zeros(0, np.uint32)

    def __len__(self) -> int:
        return len(self.slots) + len(self.recent_words)

    @property
    def nbytes(self) -> int:
        arrays = (self.starts, self.tails, self.slots, self.recent_words, self.recent_slots)
        return sum(array.nbytes for array in arrays)

    def add(self, found: np.ndarray, slots: np.ndarray) -> None:
        entries = _entries([(self.recent_words, self.recent_slots)], (found, slots))
        self.recent_slots = entries.astype(np.uint32)  # the low 32 bits
        entries >>= np.uint64(32)
        self.recent_words = entries.astype(np.uint32)
        if len(self.recent_words) > max(_RECENT, len(self.slots) // 16):
            self.merge()

    def merge(self, live: np.ndarray | None = None) -> None:
        """Fold the recent run into the main one, and drop the entries of pictures not
        ``live`` (by picture: two slots each, see FeatureIndex)."""
        buckets = np.arange(len(self.starts) - 1, dtype=np.uint32)
        held = np.repeat(buckets, np.diff(self.starts)) << np.uint32(WORD_BITS - self.bits)
        if len(self.tails):
            held |= self.tails
        entries = _entries([(held, self.slots), (self.recent_words, self.recent_slots)])
        del held
        slots = entries.astype(np.uint32)  # the low 32 bits
        if live is not None:
            kept = live[slots >> 1]
            entries, slots = entries[kept], slots[kept]
        entries >>= np.uint64(32)
        self.bits = _directory_bits(len(entries))
        tail_bits = WORD_BITS - self.bits
        self.tails = (
            (entries & np.uint64((1 << tail_bits) - 1)).astype(np.uint8)
            if tail_bits
            else np.zeros(0, np.uint8)
        )
        entries >>= np.uint64(tail_bits)
        counts = np.bincount(entries.view(np.int64), minlength=1 << self.bits)
        self.starts = np.empty(len(counts) + 1, np.uint32)
        self.starts[0] = 0
        np.cumsum(counts, dtype=np.uint32, out=self.starts[1:])
        self.slots = slots
        self.recent_words = np.zeros(0, np.uint32)
        self.recent_slots = np.zeros(0, np.uint32)

    def _main_runs(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each query word's entries start in the main run, and how many there
        are: its slot of the directory, then, while the directory holds buckets of
        words, a binary search of the bucket's tails for the first entry at the word's
        tail and the first past it, for all the query words at once."""
        tail_bits = WORD_BITS - self.bits
        buckets = query >> np.uint32(tail_bits)
        low = self.starts[buckets].astype(np.int64)
        high = self.starts[buckets + 1].astype(np.int64)
        if not tail_bits:
            return low, high - low
        tails = (query & np.uint32((1 << tail_bits) - 1)).astype(np.int16)
        # The first entry not below the tail, then the first entry above it.
        bounds = self._bound(np.tile(low, 2), np.tile(high, 2), np.concatenate([tails, tails + 1]))
        first, last = np.split(bounds, 2)
        return first, last - first

    def _bound(self, low: np.ndarray, high: np.ndarray, tails: np.ndarray) -> np.ndarray:
        """For each range of the main run, the first entry whose last byte is not below
        its tail: a binary search of all the ranges at once, in steps of halving powers
        of two, each taken where the entry before its end is still below the tail."""
        found = low
        if not len(low):
            return found
        limit = max(0, len(self.tails) - 1)
        step = 1 << int((high - low).max()).bit_length()
        while step := step >> 1:
            end = found + step
            below = (end <= high) & (self.tails[np.minimum(end - 1, limit)] < tails)
            found = found + step * below
        return found

    def pairs(self, query: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """(query row, slot) for every entry filed under a query word, words held more
        than ``limit`` times left out."""
        runs = [(*self._main_runs(query), self.slots)]
        if len(self.recent_words):
            first = np.searchsorted(self.recent_words, query, "left")
            sizes = np.searchsorted(self.recent_words, query, "right") - first
            runs.append((first, sizes, self.recent_slots))
        rows, slots = [], []
        for first, sizes, owners in runs:
            voting = (sizes > 0) & (sizes <= limit)
            sizes, first = sizes[voting], first[voting]
            # Every entry of every voting run, without a Python loop over the runs.
            index = np.repeat(first - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
            rows.append(np.repeat(np.flatnonzero(voting), sizes))
            slots.append(owners[index])
        return np.concatenate(rows), np.concatenate(slots)


class FeatureIndex:
    """Banned pictures by the words of their local features, searched by vote.

    Each picture is filed under its own words and, apart, under those of it mirrored: an
    upload's descriptors then vote for a mirrored copy's picture as they do for a copy's,
    with no descriptors of the upload mirrored to compute. Picture ``p``'s own entries
    are slot ``2p``, its mirrored ones ``2p + 1``."""

    def __init__(self) -> None:
        self._tables = [_Table() for _ in range(WORD_TABLES)]
        self._picture: dict[int, int] = {}
        self._keys = np.zeros(0, np.int64)  # by picture
        self._live = np.zeros(0, bool)
        self._dead = 0
        # Live pictures filed without their mirrored words (stored before they were).
        self._unmirrored: set[int] = set()

    def __len__(self) -> int:
        return len(self._picture)

    def __contains__(self, key: int) -> bool:
        return key in self._picture

    @property
    def nbytes(self) -> int:
        """The memory its arrays hold."""
        own = self._keys.nbytes + self._live.nbytes
        return own + sum(table.nbytes for table in self._tables)

    @property
    def mirrors_all(self) -> bool:
        """Whether every picture is filed under its mirrored words too: if not, only an
        upload mirrored finds a mirrored copy of those that are not."""
        return not self._unmirrored

    def add_many(self, items: Iterable[tuple[int, np.ndarray, np.ndarray | None]]) -> None:
        """File pictures under their words and those of it mirrored ((WORD_TABLES, n)
        arrays; None: not known); a key held is filed anew."""
        keys: list[int] = []
        found: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        for key, (held, mirrored) in {key: rest for key, *rest in items}.items():
            self.remove(key)
            picture = len(self._keys) + len(keys)
            self._picture[key] = picture
            keys.append(key)
            for turn, words_held in enumerate((held, mirrored)):
                if words_held is not None:
                    found.append(words_held)
                    slots.append(np.full(words_held.shape[1], 2 * picture + turn, np.uint32))
            if mirrored is None:
                self._unmirrored.add(key)
        if not keys:
            return
        self._keys = np.concatenate([self._keys, np.array(keys, np.int64)])
        self._live = np.concatenate([self._live, np.ones(len(keys), bool)])
        everything = np.concatenate(found, axis=1)
        owners = np.concatenate(slots)
        for table, column in zip(self._tables, everything, strict=True):
            table.add(column, owners)

    def remove(self, key: int) -> None:
        picture = self._picture.pop(key, None)
        if picture is None:
            return
        self._unmirrored.discard(key)
        self._live[picture] = False
        self._dead += 1
        if self._dead > max(_DEAD, len(self._picture) // 8):
            for table in self._tables:
                table.merge(self._live)
            self._dead = 0

    def nominate(
        self,
        uploads: Sequence[LocalFeatures],
        per_region: int,
        regions: Sequence[Region] = REGIONS,
    ) -> list[tuple[int, int, list[Region]]]:
        """(key, whether the picture is nominated mirrored (1) or as it is (0), the
        regions it was nominated in) for the pictures with the most votes in each of the
        ``regions`` of each upload (the same picture as it is, and maybe mirrored: what it
        finds of a picture's mirrored words counts as it is), as it is and mirrored apart:
        the best of every region first, then the second best, up to ``per_region`` each
        way; a picture nominated both ways comes once for each."""
        ranked = [
            (ranking, number ^ turn, region)
            for number, upload in enumerate(uploads)
            for turn, rankings in enumerate(self._rank(upload, per_region, regions))
            for ranking, region in zip(rankings, regions, strict=False)
        ]
        found: dict[tuple[int, int], list[Region]] = {}
        for place in range(per_region):
            for ranking, which, region in ranked:
                if place < len(ranking):
                    found.setdefault((ranking[place], which), []).append(region)
        return [(key, which, regions) for (key, which), regions in found.items()]

    def _rank(
        self, upload: LocalFeatures, count: int, regions: Sequence[Region]
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Per region of the upload, the keys of the ``count`` pictures with the most
        votes from its descriptors there (at least MIN_VOTES) for their own words, and
        the same for their mirrored words."""
        if not self._picture or not len(upload.descriptors):
            return [], []
        total = sum(len(table) for table in self._tables)
        limit = max(_COMMON, total // _COMMON_SHARE)
        slots_held = 2 * len(self._keys)
        pairs = []
        for table, query in zip(self._tables, words(upload.descriptors), strict=True):
            # Each distinct word once, from the first descriptor holding it.
            _, first = np.unique(query, return_index=True)
            rows, slots = table.pairs(query[first], limit)
            pairs.append(first[rows] * slots_held + slots)
        # One vote per descriptor and slot, whichever tables they met in.
        unique = distinct(np.concatenate(pairs))
        rows, slots = np.divmod(unique, slots_held)
        alive = self._live[slots >> 1]
        rows, slots = rows[alive], slots[alive]
        voted, slots = np.unique(slots, return_inverse=True)
        keys = self._keys[voted >> 1]
        mirrored = (voted & 1).astype(bool)
        x = upload.points[rows, 0] / max(1, upload.size[0])
        y = upload.points[rows, 1] / max(1, upload.size[1])
        rankings: tuple[list[list[int]], list[list[int]]] = ([], [])
        for left, top, right, bottom in regions:
            inside = (x >= left) & (x < right) & (y >= top) & (y < bottom)
            votes = np.bincount(slots[inside], minlength=len(voted))
            for turn, ranking in enumerate(rankings):
                best = np.flatnonzero((votes >= MIN_VOTES) & (mirrored == turn))
                # Most votes first; ties by key, so that a ranking is the same however
                # the index was filled.
                best = best[np.lexsort((keys[best], -votes[best]))][:count]
                ranking.append(keys[best].tolist())
        return rankings
