"""Exact in-memory search for hashes within a Hamming distance.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Exact Search in Hamming Space with
Multi-Index Hashing", 2014): each code is cut into ``m`` chunks, and each chunk indexes
the codes by its value. Two codes within ``r`` bits of each other, with ``r = s*m + a``,
have one of their first ``a + 1`` chunks within ``s`` bits, or one of the others within
``s - 1`` (otherwise they would differ in at least ``r + 1``). A query looks up every
value that near its own chunks, and checks the few codes found there in full: the same
results as comparing every code, at a small share of the cost.

When a query would look up so much that the full scan is cheaper (a small index, a wide
radius), it scans. Codes added since the chunk tables were built are scanned, and removed
ones are masked out, until enough of either makes a rebuild worth it.
``benchmarks/bench_index.py`` prints the figures beside the full scan.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np

_INITIAL_CAPACITY = 1024
# Below this many codes a scan is as fast as the tables, which would only cost memory.
_MIN_TABLES = 32_768
# Tables are rebuilt once the codes added since the last build reach 1/64 of those indexed,
# or the removed ones 1/8 (at least this many either way): scanning the added ones stays
# cheap until then, and removed ones only cost a masked check.
_MIN_REBUILD = 4096
# A chunk's value indexes one table of 2**width slots: this caps a chunk at 2**24 slots
# (16 MB of 8-bit offsets).
_MAX_CHUNK_BITS = 24
# Chunks indexed at once, in threads: numpy sorts without holding the GIL (two of 10M
# values: 0.55 of the time of one after the other), and each costs its temporaries.
_BUILDERS = 2
# Offsets and keys are held as steps within blocks of 2**_BLOCK_BITS (see _Ascending).
_BLOCK_BITS = 6
_BLOCK = 1 << _BLOCK_BITS
_PIECE = _BLOCK * 4096
_STEPS = (np.uint8, np.uint16, np.uint32, np.int64)
# A scan compares the queries with this many words of codes at a time, which stay in the
# cache from one query to the next (100k codes, an upload's near-miss queries: PDQ 1.6 ms
# a code at a time over all of them, 1.2 ms in blocks; 64-bit 0.29 ms, 0.26).
_SCAN_WORDS = 1 << 16
# A chunk in which a search finds this many rows a query keeps its codes in its run, to
# read in order, in place of its row numbers (see _Tables): 5 more bytes a row, worth it
# for pHash at radius 10 at 10M (7.4k rows a query there; eight queries 0.80-0.82x), not
# for dHash at 4 (106; 1.3-1.4x).
_HELD = 1024
# Values ``_Ascending.find`` looks for at once: each gathers the values of its block.
_FOUND_AT_ONCE = 1 << 16
_NONE = np.zeros(0, dtype=np.int64)


class HammingIndex:
    """Keys (ints) mapped to fixed-width hex hashes, searchable by Hamming distance, each
    with a small integer ``tag`` for the caller (what kind of entry it is).

    Codes are rows of a ``(capacity, bits // 64)`` array of 64-bit words. Adding appends a
    row; removing marks the row dead; rebuilding packs the live rows in key order and
    indexes them. Keys are found by bisecting the packed rows (and through a dict for
    those added since), not through a dict of every key, which would cost more than the
    codes themselves at millions; and the packed rows' keys, in order, are held as steps
    (see _Ascending): a byte a key where they are about as dense as a database's ids.

    ``radius``: the one most searches will use, if known; the chunk tables are laid out
    for it (see _Tables), and searches at any other are as exact.
    """

    def __init__(self, bits: int, radius: int | None = None) -> None:
        if bits <= 0 or bits % 64:
            raise ValueError(f"bits must be a positive multiple of 64, not {bits}")
        self.bits = bits
        self.radius = radius
        self._codes = np.zeros((_INITIAL_CAPACITY, bits // 64), dtype=np.uint64)
        # The keys of the packed rows, and of those added since (``row - _indexed``).
        self._packed_keys = _Ascending([])
        self._added_keys = np.zeros(_INITIAL_CAPACITY, dtype=np.int64)
        # The tags of the packed rows, as runs where they come in runs (see _Runs), and of
        # those added since. Held in the narrow type while they fit (a few groups do), and
        # widened the first time one does not.
        self._packed_tags: np.ndarray | _Runs = np.zeros(0, dtype=np.uint8)
        self._added_tags = np.zeros(_INITIAL_CAPACITY, dtype=np.uint8)
        self._live = _Flags(_INITIAL_CAPACITY)
        self._count = 0  # rows in use, dead ones included
        self._dead = 0
        # Rows before _indexed are in key order, so that a key is found by bisection;
        # rows added since are found through this dict.
        self._indexed = 0
        self._recent: dict[int, int] = {}
        self._tables: _Tables | None = None

    def __len__(self) -> int:
        return self._count - self._dead

    def __contains__(self, key: int) -> bool:
        return self._row(key) is not None

    @property
    def tabled(self) -> int:
        """How many rows the chunk tables index (0: every query scans)."""
        return self._tables.count if self._tables else 0

    def nbytes(self) -> int:
        """Memory held by the arrays (not the dict of keys added since the last build)."""
        arrays = (self._codes, self._added_keys, self._packed_tags, self._added_tags)
        tables = self._tables.nbytes() if self._tables else 0
        held = self._packed_keys.nbytes() + self._live.nbytes() + tables
        return sum(array.nbytes for array in arrays) + held

    def add(self, key: int, code_hex: str, tag: int = 0) -> None:
        """Store ``code_hex`` under ``key``, replacing any code the key already has."""
        self.add_many([key], [code_hex], [tag])

    def add_many(self, keys: list[int], codes: list[str], tags: list[int] | None = None) -> None:
        """``add`` for many at once, as a rebuild does: decoded and stored in a few numpy
        operations rather than one Python call each. A key given twice keeps its last."""
        if len(keys) != len(codes) or (tags is not None and len(tags) != len(keys)):
            raise ValueError("add_many needs one code (and tag) per key.")
        self.add_arrays(
            np.asarray(keys, dtype=np.int64),
            self.decode(codes),
            np.asarray(tags if tags is not None else [0] * len(keys), dtype=np.uint32),
        )

    def add_arrays(self, key_array: np.ndarray, rows: np.ndarray, tag_array: np.ndarray) -> None:
        """``add_many`` of keys, codes as ``decode`` gives them, and tags."""
        if not len(key_array):
            return
        # The last of each key: a stable sort keeps each key's rows in the order given.
        order = np.argsort(key_array, kind="stable")
        ordered = key_array[order]
        last = order[np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))]
        if not self._count and len(last) >= _MIN_TABLES:
            # A build: packed in key order at once, not appended to be packed again.
            self._pack(rows, key_array, tag_array, last)
            return
        if len(last) < len(key_array):
            keep = np.sort(last)
            key_array, rows, tag_array = key_array[keep], rows[keep], tag_array[keep]
        self._forget(key_array)
        self._added_tags = _holding(self._added_tags, tag_array)
        start, end = self._count, self._count + len(key_array)
        self._reserve(end)
        self._codes[start:end] = rows
        self._added_keys[start - self._indexed : end - self._indexed] = key_array
        self._added_tags[start - self._indexed : end - self._indexed] = tag_array
        self._live.put(np.arange(start, end), True)
        self._count = end
        if self._rebuild_due():
            self._rebuild()
        else:
            self._recent.update(zip(key_array.tolist(), range(start, end), strict=True))

    def remove(self, key: int) -> None:
        """Forget ``key``; a key that is not there is ignored."""
        self._forget(np.asarray([key], dtype=np.int64))
        if self._rebuild_due():
            self._rebuild()

    def query(self, code_hex: str, max_distance: int) -> list[tuple[int, int]]:
        """Every ``(key, distance)`` within ``max_distance``, nearest first, then by key."""
        keys, _, distances = self.search(code_hex, max_distance)
        order = np.lexsort((keys, distances))
        return list(zip(keys[order].tolist(), distances[order].tolist(), strict=True))

    def search(self, code_hex: str, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The keys within ``max_distance``, their tags and their distances, in no
        particular order."""
        return self.search_many([code_hex], max_distance)[0]

    def search_many(
        self, codes_hex: list[str], max_distance: int
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``search`` for each code, in one pass over the tables for all of them: an
        upload's turns and views, each one query, cost one call."""
        if not codes_hex:
            return []
        queries = self.decode(codes_hex)
        which, rows, distances = self._search(queries, max_distance)
        if len(queries) == 1:
            return [(self._keys(rows), self._tags(rows), distances)]
        # Each query's results, as runs of the results ordered by query.
        order = np.argsort(which, kind="stable")
        runs = np.split(order, np.cumsum(np.bincount(which, minlength=len(queries)))[:-1])
        keys, tags = self._keys(rows), self._tags(rows)
        return [(keys[run], tags[run], distances[run]) for run in runs]

    def get(self, key: int) -> tuple[str, int] | None:
        """The code (hex) and tag stored under ``key``, or None."""
        row = self._row(key)
        if row is None:
            return None
        return encode(self._codes[row]), int(self._tags(np.asarray([row]))[0])

    def scan(self, code_hex: str, max_distance: int) -> list[tuple[int, int]]:
        """``query`` by comparing every code: the reference the tables must agree with."""
        _, rows, distances = self._scans(self.decode([code_hex]), max_distance, 0)
        keys = self._keys(rows)
        order = np.lexsort((keys, distances))
        return list(zip(keys[order].tolist(), distances[order].tolist(), strict=True))

    # -- searching -----------------------------------------------------------------------

    def _search(
        self, queries: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(which query, row, distance) for every live row within ``radius`` of each of
        the queries (rows of words)."""
        tables = self._tables
        plan = tables.plan(radius) if tables is not None else None
        if tables is None or plan is None:
            return self._scans(queries, radius, 0)
        which, rows, distances = tables.near(self._codes, queries, plan, radius)
        if self._dead:  # only the few near rows are looked up
            live = self._live[rows]
            which, rows, distances = which[live], rows[live], distances[live]
        if len(rows) > 1:  # a code near a query in several chunks is found in each
            once = _one_of_each(which * self._count + rows)
            which, rows, distances = which[once], rows[once], distances[once]
        if self._indexed == self._count:
            return which, rows, distances
        # Rows added since the tables were built are compared one by one.
        more_which, more_rows, more_distances = self._scans(queries, radius, self._indexed)
        return (
            np.concatenate([which, more_which]),
            np.concatenate([rows, more_rows]),
            np.concatenate([distances, more_distances]),
        )

    def _scans(
        self, queries: np.ndarray, radius: int, start: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_search`` by comparing each query with every row from ``start`` on, a block of
        rows at a time for all the queries, so that each block is read from the cache
        after the first query. A query's complement (an upload's negative) is not compared
        again: each row's distance to it is the bits less the distance to the query."""
        seen: dict[bytes, int] = {}
        complements: list[int | None] = []
        for number, query in enumerate(queries):
            complements.append(seen.get((~query).tobytes()))
            seen.setdefault(query.tobytes(), number)
        found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in queries]
        step = _SCAN_WORDS // queries.shape[1]
        scratch = _Scratch(min(step, self._count - start))
        for begin in range(start, self._count, step):
            end = min(begin + step, self._count)
            live = self._live.span(begin, end)
            block: list[np.ndarray] = []
            for number, (query, complement) in enumerate(zip(queries, complements, strict=True)):
                if complement is not None:
                    distances = self.bits - block[complement]
                else:
                    distances = scratch.distances(self._codes[begin:end], query)
                block.append(distances)
                hits = np.flatnonzero((distances <= radius) & live)
                found[number].append((hits + begin, distances[hits].astype(np.int64)))
        which = np.repeat(
            np.arange(len(queries)), [sum(len(rows) for rows, _ in own) for own in found]
        )
        rows = np.concatenate([rows for own in found for rows, _ in own] or [_NONE])
        distances = np.concatenate([apart for own in found for _, apart in own] or [_NONE])
        return which, rows, distances

    # -- keeping rows --------------------------------------------------------------------

    def _keys(self, rows: np.ndarray) -> np.ndarray:
        """The key of each row."""
        return self._by_row(rows, self._packed_keys, self._added_keys)

    def _tags(self, rows: np.ndarray) -> np.ndarray:
        """The tag of each row."""
        return self._by_row(rows, self._packed_tags, self._added_tags)

    def _by_row(
        self, rows: np.ndarray, packed: "np.ndarray | _Ascending | _Runs", added: np.ndarray
    ) -> np.ndarray:
        """Each row's value: a packed row's from ``packed``, one added since the last
        build from ``added``."""
        if self._indexed == self._count:  # none added since
            return packed[rows]
        values = np.empty(len(rows), dtype=np.int64)
        before = rows < self._indexed
        values[before] = packed[rows[before]]
        since = ~before
        values[since] = added[rows[since] - self._indexed]
        return values

    def _row(self, key: int) -> int | None:
        row = self._recent.get(key)
        if row is not None or not _fits(np.dtype(np.int64), key):
            return row
        row = self._packed_keys.find_one(key, self._indexed)
        return row if row >= 0 and self._live.is_set(row) else None

    def _packed_rows(self, keys: np.ndarray) -> np.ndarray:
        """The live packed rows of these keys (each key's, where it has one)."""
        rows = self._packed_keys.find(keys, self._indexed)
        rows = rows[rows >= 0]
        return rows[self._live[rows]]

    def _forget(self, keys: np.ndarray) -> None:
        """Mark the rows of these keys dead, wherever they are."""
        recent = [self._recent.pop(key, None) for key in (keys.tolist() if self._recent else ())]
        rows_added = np.asarray([row for row in recent if row is not None], dtype=np.int64)
        self._live.put(rows_added, False)
        self._dead += len(rows_added)
        if not self._indexed:
            return
        rows = self._packed_rows(keys)
        self._live.put(rows, False)
        self._dead += len(rows)

    def _rebuild_due(self) -> bool:
        added = self._count - self._indexed
        return added >= max(_MIN_REBUILD, self._indexed // 64) or self._dead >= max(
            _MIN_REBUILD, self._indexed // 8
        )

    def _rebuild(self) -> None:
        """Pack the live rows to the front in key order, and index the chunks again."""
        live = np.flatnonzero(self._live.span(0, self._count))
        every = np.arange(self._count)
        keys = self._keys(every)
        ordered = live[np.argsort(keys[live], kind="stable")]
        self._pack(self._codes, keys, self._tags(every), ordered)

    def _pack(
        self, codes: np.ndarray, keys: np.ndarray, tags: np.ndarray, rows: np.ndarray
    ) -> None:
        """Hold ``rows`` of these arrays (in key order, each key once) at the front of new
        ones, and index them."""
        count = len(rows)
        self._tables = None  # freed before the new ones are made
        # Room for the adds before the next rebuild, so the arrays need not grow meanwhile.
        capacity = count + max(_MIN_REBUILD, count // 64) + 1
        self._codes = _gathered(codes, rows, capacity)
        self._packed_keys = _Ascending([_whole_blocks(keys[rows])])
        self._added_keys = np.zeros(capacity - count, dtype=np.int64)
        self._packed_tags = _tags_held(tags[rows])
        self._added_tags = np.zeros(capacity - count, dtype=self._added_tags.dtype)
        self._live = _Flags(capacity, count)
        self._count, self._dead, self._indexed = count, 0, count
        self._recent = {}
        self._tables = (
            _Tables(self._codes[:count], self.bits, self.radius) if count >= _MIN_TABLES else None
        )

    def _reserve(self, rows: int) -> None:
        capacity = self._codes.shape[0]
        if rows <= capacity:
            return
        while capacity < rows:
            capacity *= 2
        self._codes = _resized(self._codes[: self._count], capacity)
        self._added_keys = _resized(
            self._added_keys[: self._count - self._indexed], capacity - self._indexed
        )
        self._added_tags = _resized(
            self._added_tags[: self._count - self._indexed], capacity - self._indexed
        )
        self._live = self._live.grown(capacity)

    def decode(self, codes: list[str]) -> np.ndarray:
        """Hex codes as rows of 64-bit words; ValueError names a malformed one."""
        return decode(codes, self.bits)


def encode(words: np.ndarray) -> str:
    """One code's 64-bit words (a row of what ``decode`` gives) as hex."""
    return words.astype(">u8").tobytes().hex()


def decode(codes: list[str], bits: int) -> np.ndarray:
    """``bits``-bit hex codes as rows of 64-bit words; ValueError names a malformed one."""
    try:
        return decode_joined("".join(codes), len(codes), bits)
    except ValueError:
        for code in codes:  # one is malformed: say which
            decode_joined(code, 1, bits)
        raise


def decode_joined(codes: str, count: int, bits: int) -> np.ndarray:
    """``count`` ``bits``-bit hex codes written one after the other, as rows of 64-bit
    words; ValueError when they are not."""
    try:
        raw = bytes.fromhex(codes)
    except ValueError:
        raw = b""
    # Checked on the decoded bytes too, because fromhex skips spaces.
    if len(codes) != count * bits // 4 or len(raw) * 8 != count * bits:
        shown = repr(codes) if count == 1 else f"{count} codes ({codes[:80]!r}...)"
        raise ValueError(f"Expected a {bits}-bit hash of {bits // 4} hex digits, got {shown}.")
    return np.frombuffer(raw, dtype=">u8").reshape(count, bits // 64).astype(np.uint64)


def _fits(dtype: np.dtype, value: int) -> bool:
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def _holding(array: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``array`` in the narrowest of its type and the wider ones after it that holds
    ``values`` too."""
    if not len(values):
        return array
    low, high = int(values.min()), int(values.max())
    for wide in (array.dtype, *_WIDER.get(array.dtype, ())):
        if _fits(wide, low) and _fits(wide, high):
            return array if wide == array.dtype else array.astype(wide)
    raise ValueError(f"{low}..{high} do not fit in {array.dtype} or wider")


def _tags_held(tags: np.ndarray) -> "np.ndarray | _Runs":
    """Tags in the narrowest type that holds them, from 8 bits, as runs where those cost
    less (see _Runs)."""
    narrow = tags.astype(_holding(np.zeros(0, dtype=np.uint8), tags).dtype, copy=False)
    starts = np.flatnonzero(_run_starts(narrow))
    if len(starts) * (8 + narrow.itemsize) >= narrow.nbytes:
        return narrow
    return _Runs(narrow, starts)


# Tags start in 8 bits.
_WIDER = {
    np.dtype(np.uint8): (np.dtype(np.uint16), np.dtype(np.uint32)),
    np.dtype(np.uint16): (np.dtype(np.uint32),),
}


def _gathered(
    array: np.ndarray, rows: np.ndarray, capacity: int, dtype: np.dtype | None = None
) -> np.ndarray:
    """``array``'s ``rows``, in ``dtype``, at the front of a zeroed array of ``capacity``
    rows: gathered into it, not copied there from a gathered array (and by ``take`` in
    its clipping mode: checking each row, it gathers into a copy of its own first)."""
    grown = np.zeros((capacity, *array.shape[1:]), dtype=dtype or array.dtype)
    if array.dtype == grown.dtype:
        np.take(array, rows, axis=0, out=grown[: len(rows)], mode="clip")
    else:
        grown[: len(rows)] = array[rows]
    return grown


def _resized(rows: np.ndarray, capacity: int) -> np.ndarray:
    """``rows`` at the front of a zeroed array of ``capacity`` rows."""
    grown = np.zeros((capacity, *rows.shape[1:]), dtype=rows.dtype)
    grown[: len(rows)] = rows
    return grown


def distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values of a 1-D array, in order: ``np.unique`` by a sort, which for
    the few thousand of a query costs a third of numpy's own (hashing) way."""
    ordered = np.sort(values)
    return ordered[_run_starts(ordered)]


def _one_of_each(values: np.ndarray) -> np.ndarray:
    """A place of each distinct value, in the values' order: ``np.unique``'s
    ``return_index`` for the few rows a query finds, at a fraction of its cost there."""
    order = np.argsort(values)
    return order[_run_starts(values[order])]


def _run_starts(ordered: np.ndarray) -> np.ndarray:
    """Whether each of ``ordered`` (sorted) starts a run of equal values."""
    starts = np.empty(len(ordered), dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return starts


def pair_bits(
    left: np.ndarray, left_rows: np.ndarray, right: np.ndarray, right_rows: np.ndarray
) -> np.ndarray:
    """The bits apart of each pair of rows (words): ``left[left_rows[i]]`` and
    ``right[right_rows[i]]``. Rows are gathered by ``take``: indexing a 2-D array with them
    costs up to four times as much (numpy 2.4, 100,000 random rows of four words of ten
    million: 6.65 ms, by take 1.65)."""
    return row_bits(np.take(left, left_rows, axis=0) ^ _each(right, right_rows))


def _each(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``; where there is only one, itself, for the operation to broadcast
    (one query's rows need no copy of it each)."""
    return values[:1] if len(values) == 1 else np.take(values, rows, axis=0)


def row_bits(words: np.ndarray) -> np.ndarray:
    """The set bits of each row of (n, w) 64-bit words, added a column at a time: numpy's
    sum along so short a last axis costs four times as much."""
    counts = np.bitwise_count(words)
    total = counts[:, 0].astype(np.int64)
    for column in range(1, counts.shape[1]):
        total += counts[:, column]
    return total


class _Flags:
    """A flag a row (whether it is live), eight to a byte (10M rows: 1.25 MB, not 10)."""

    def __init__(self, capacity: int, count: int = 0) -> None:
        """Flags for ``capacity`` rows, the first ``count`` set."""
        self._bytes = np.zeros(-(-capacity // 8), dtype=np.uint8)
        self._bytes[: count // 8] = 0xFF
        if count % 8:
            self._bytes[count // 8] = (1 << count % 8) - 1

    def nbytes(self) -> int:
        return self._bytes.nbytes

    def grown(self, capacity: int) -> "_Flags":
        grown = _Flags(capacity)
        grown._bytes[: len(self._bytes)] = self._bytes
        return grown

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """Whether each of ``rows`` is set."""
        return (np.right_shift(self._bytes[rows >> 3], rows & 7) & 1).astype(bool)

    def is_set(self, row: int) -> bool:
        return bool(self._bytes[row >> 3] >> (row & 7) & 1)

    def span(self, begin: int, end: int) -> np.ndarray:
        """Whether each row from ``begin`` to ``end`` is set."""
        flags = np.unpackbits(self._bytes[begin >> 3 : -(-end // 8)], bitorder="little")
        return flags[begin & 7 : (begin & 7) + end - begin].view(bool)

    def put(self, rows: np.ndarray, value: bool) -> None:
        """Set (``value`` true) or clear the flags of ``rows``."""
        masks = np.left_shift(1, rows & 7).astype(np.uint8)
        if value:
            np.bitwise_or.at(self._bytes, rows >> 3, masks)
        else:
            np.bitwise_and.at(self._bytes, rows >> 3, ~masks)


class _Runs:
    """A value a row, held as runs of equal values: the row each run starts at, and its
    value. An index's tags come so: one group for all the bans of a list imported at once,
    and no PDQ quality in the pHash and dHash indexes (see FingerprintStore)."""

    def __init__(self, values: np.ndarray, starts: np.ndarray) -> None:
        self._starts = starts
        self._values = values[starts]

    @property
    def nbytes(self) -> int:  # a property, as an array's: it stands where one would
        return self._starts.nbytes + self._values.nbytes

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self._values[np.searchsorted(self._starts, rows, side="right") - 1]


class _Scratch:
    """The arrays a scan works a block of rows in, made once for all its blocks."""

    def __init__(self, rows: int) -> None:
        self._xor = np.empty(rows, dtype=np.uint64)
        self._bits = np.empty(rows, dtype=np.uint8)

    def distances(self, codes: np.ndarray, query: np.ndarray) -> np.ndarray:
        """The distance of each of ``codes`` (rows of words) to ``query``, new each call."""
        rows = codes.shape[0]
        xor, bits = self._xor[:rows], self._bits[:rows]
        np.bitwise_xor(codes[:, 0], query[0], out=xor)
        # 64 bits apart at most fit the counts' own bytes.
        distances = np.bitwise_count(xor).astype(
            np.uint8 if len(query) == 1 else np.uint16, copy=False
        )
        for word in range(1, query.shape[0]):
            np.bitwise_xor(codes[:, word], query[word], out=xor)
            np.add(distances, np.bitwise_count(xor, out=bits), out=distances)
        return distances


class _Tables:
    """The chunk tables over a fixed set of rows: for each chunk, the rows ordered by the
    chunk's value (``order``, one run per chunk) and where each value's rows start in it
    (``offsets``, one slot per value of each chunk, see _Ascending).

    Both are held narrow, since together they cost more than the codes: row numbers in
    three bytes while there are at most 2**24 rows, and each offset as an 8-bit step from
    the first of its block of _BLOCK slots (wider where most blocks hold more rows).

    Codes of one word searched mostly at a radius that finds many rows in one chunk past
    the first keep that chunk's run as the codes themselves (``held``), not their rows:
    a search reads them in order rather than each row's code at random (pHash at radius
    10 at 10M: 7.4k of its 12.9k rows a query). The few within reach are found back by
    their code through the first chunk."""

    def __init__(self, codes: np.ndarray, bits: int, radius: int | None = None) -> None:
        count = codes.shape[0]
        # Chunks as wide as the count of codes is in bits (one to two slots for each code):
        # wider ones are looked up in many more slots, narrower ones hold more codes per
        # slot, each a candidate to check in full (at 10M, 12 PDQ chunks instead of 11
        # took twice as long a query).
        width = min(_MAX_CHUNK_BITS, count.bit_length())
        chunks = math.ceil(bits / width)
        base, wider = divmod(bits, chunks)
        self.widths = [base + 1] * wider + [base] * (chunks - wider)
        self.starts = [sum(self.widths[:index]) for index in range(chunks)]
        # Where each chunk is, for ``values``: its word, the next word (its own in the
        # last), how far into its word it starts, and how wide it is.
        self._word = np.asarray(self.starts) // 64
        self._next = np.minimum(self._word + 1, bits // 64 - 1)
        self._shift = (np.asarray(self.starts) % 64).astype(np.uint64)
        self._width = np.asarray(self.widths, dtype=np.uint64)
        self.bits = bits
        self.count = count
        self.coded = _held_chunk(self.widths, count, radius) if codes.shape[1] == 1 else None
        # Positions in one order of all chunks: the held chunk's run last, after the row
        # numbers of the others.
        places = [index for index in range(chunks) if index != self.coded]
        places += [] if self.coded is None else [self.coded]
        self.held_from = (chunks - 1) * count if self.coded is not None else chunks * count
        self.order = _RowNumbers(self.held_from, count)
        self.held = np.empty(count if self.coded is not None else 0, dtype=np.uint64)
        wide = np.uint32 if chunks * count < 1 << 32 else np.int64
        rows = np.arange(count, dtype=np.uint64)

        def index_chunk(index: int) -> np.ndarray:
            start, width = self.starts[index], self.widths[index]
            values = _chunk(codes, start, width)
            # Positions in the whole order, so that one array of offsets serves every
            # chunk; padded with the chunk's end to whole blocks, so that each chunk's
            # offsets are blocks of their own, non-decreasing (see _Ascending).
            slots = 1 << width
            offset = np.empty(-(-(slots + 1) // _BLOCK) * _BLOCK, dtype=wide)
            offset[0] = 0
            np.cumsum(np.bincount(values, minlength=slots), out=offset[1 : slots + 1])
            offset[slots + 1 :] = offset[slots]
            first = places.index(index) * count
            np.add(offset, first, out=offset)
            ordered = _by_value(values, rows)
            if index == self.coded:
                np.take(codes[:, 0], ordered.view(np.int64), out=self.held, mode="clip")
            else:
                self.order.put(first, ordered)
            return offset

        with ThreadPoolExecutor(_BUILDERS) as builders:
            offsets = list(builders.map(index_chunk, range(chunks)))
        self.offset_base = [sum(map(len, offsets[:index])) for index in range(chunks)]
        self.offsets = _Ascending(offsets)
        self._plans: dict[int, _Plan | None] = {}

    def nbytes(self) -> int:
        return self.order.nbytes() + self.offsets.nbytes() + self.held.nbytes

    def plan(self, radius: int) -> "_Plan | None":
        """What a query at ``radius`` looks up, or None when scanning every code is cheaper."""
        if radius not in self._plans:
            self._plans[radius] = _Plan.make(self, radius)
        return self._plans[radius]

    def near(
        self, codes: np.ndarray, queries: np.ndarray, plan: "_Plan", radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(which query, row, distance) for the rows of ``codes`` within ``radius`` of a
        query among those sharing a chunk value with it within the plan's flips (some
        more than once)."""
        values = self.values(queries)
        positions, which = self._positions(plan.slots(values, plan.numbered))
        rows = self.order[positions]
        distances = pair_bits(codes, rows, queries, which)
        hit = np.flatnonzero(distances <= radius)
        found = [(which[hit], rows[hit], distances[hit])]
        if plan.held is not None:
            positions, which = self._positions(plan.slots(values, plan.held))
            code = np.take(self.held, positions - self.held_from)
            apart = np.bitwise_count(code ^ _each(queries[:, 0], which))
            hit = np.flatnonzero(apart <= radius)
            if len(hit):  # most queries find none
                # Each code once a query: every row holding it is found back for each.
                hit = hit[np.lexsort((code[hit], which[hit]))]
                kept = np.ones(len(hit), dtype=bool)
                kept[1:] = (which[hit[1:]] != which[hit[:-1]]) | (code[hit[1:]] != code[hit[:-1]])
                hit = hit[kept]
                found.append(self._rows_of(codes, code[hit], which[hit], apart[hit]))
        if len(found) == 1:
            return found[0]
        which, rows, distances = (np.concatenate(column) for column in zip(*found, strict=True))
        return which, rows, distances

    def values(self, queries: np.ndarray) -> np.ndarray:
        """Each query's value in each chunk, a row of them a query: ``_chunk`` of every
        chunk at once, in a few operations however many chunks there are."""
        return _top_bits(queries, self._word, self._next, self._shift, self._width)

    def _rows_of(
        self, codes: np.ndarray, found: np.ndarray, which: np.ndarray, apart: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(which, row, distance) for every row holding each of the codes ``found`` of the
        held chunk (one word each), looked up by its first chunk's value."""
        values = _chunk(found[:, None], self.starts[0], self.widths[0])
        positions, owner = self._positions((self.offset_base[0] + values)[:, None])
        rows = self.order[positions]
        same = np.flatnonzero(np.take(codes[:, 0], rows) == found[owner])
        owner = owner[same]
        return which[owner], rows[same], apart[owner].astype(np.int64)

    def _positions(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every position in the order of the rows in these slots (a row of them for each
        of some queries), and which row of slots each is of."""
        # Where each slot's rows begin and end, looked up together: each end is mostly in
        # the cache line of its beginning (at 10M, 0.6 of the time of two lookups).
        flat = slots.reshape(-1)
        bounds = self.offsets[np.concatenate([flat, flat + 1])]
        begins = bounds[: len(flat)]
        lengths = bounds[len(flat) :] - begins
        ends = np.cumsum(lengths)
        total = int(ends[-1]) if len(ends) else 0
        # Every position of every range, without a Python loop: each range's first
        # position, repeated over its length, plus how far into it each one is.
        positions = np.repeat(begins - ends + lengths, lengths)
        positions += np.arange(total)
        if len(slots) == 1:
            return positions, np.zeros(total, dtype=np.int64)
        # A query's slots are side by side, and so are their rows.
        counts = np.diff(ends[slots.shape[1] - 1 :: slots.shape[1]], prepend=0)
        return positions, np.repeat(np.arange(len(slots)), counts)


class _RowNumbers:
    """``size`` row numbers below ``rows``, each split in two aligned arrays: its low 16
    bits, and the rest in one byte while there are at most 2**24 rows (two past that).
    Three bytes a number, as one unaligned array would hold them, read by two plain
    gathers: numpy reads unaligned 32-bit words at half as much again (100,000 numbers in
    runs of about four, of 30 million: 6.2 ms; split, 4.0)."""

    def __init__(self, size: int, rows: int) -> None:
        self._low = np.zeros(size, dtype=np.uint16)
        self._high = np.zeros(size, dtype=np.uint8 if rows <= 1 << 24 else np.uint16)

    def nbytes(self) -> int:
        return self._low.nbytes + self._high.nbytes

    def put(self, start: int, numbers: np.ndarray) -> None:
        end = start + len(numbers)
        np.bitwise_and(numbers, 0xFFFF, out=self._low[start:end], casting="unsafe")
        np.right_shift(numbers, 16, out=self._high[start:end], casting="unsafe")

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        numbers = np.take(self._high, positions).astype(np.int64)
        numbers <<= 16
        numbers |= np.take(self._low, positions)
        return numbers


class _Ascending:
    """Integers, non-decreasing within each piece (positions, keys), each held as a step
    from the one at the start of its block of _BLOCK, in 8, 16, 32 or 64 bits: whichever
    costs least once the blocks whose steps do not fit it hold their values whole, apart
    (``_wide``). One gap in the keys (an index's first key, ids later) or one chunk value
    held by hundreds of codes then costs its own block, not a wider step for every value.
    Given in pieces of whole blocks (a chunk's offsets each), read as one: joined, the
    pieces of a 10M PDQ index's offsets would cost 700 MB more while it is built."""

    def __init__(self, pieces: list[np.ndarray]) -> None:
        self._base = np.concatenate([piece[::_BLOCK] for piece in pieces] or [_NONE]).astype(
            np.int64
        )
        spans = np.concatenate(
            [piece[_BLOCK - 1 :: _BLOCK] - piece[::_BLOCK] for piece in pieces] or [_NONE]
        )
        size = sum(map(len, pieces))

        def cost(kind: tuple[np.dtype, int]) -> int:
            steps, largest = kind
            return size * steps.itemsize + int((spans > largest).sum()) * _BLOCK * 8

        kinds = [(np.dtype(kind), int(np.iinfo(kind).max)) for kind in _STEPS]
        steps, largest = min(kinds, key=cost)
        wide = np.flatnonzero(spans > largest)
        self._steps: np.ndarray[Any, np.dtype[np.integer[Any]]]
        self._steps = np.empty(size, steps)
        self._wide_blocks = _Flags(len(spans))
        self._wide_blocks.put(wide, True)
        self._wide_at = wide  # the wide blocks, ascending
        self._wide = np.empty((len(wide), _BLOCK), dtype=np.int64)
        at = 0
        for piece in pieces:
            for start in range(0, len(piece), _PIECE):  # rather than temporaries of every slot
                part = piece[start : start + _PIECE]
                first = np.repeat(part[::_BLOCK], _BLOCK)
                np.subtract(part, first, out=self._steps[at : at + len(part)], casting="unsafe")
                blocks = at >> _BLOCK_BITS, (at + len(part)) >> _BLOCK_BITS
                held = np.searchsorted(wide, blocks)
                if held[1] > held[0]:
                    local = wide[held[0] : held[1]] - blocks[0]
                    self._wide[held[0] : held[1]] = part.reshape(-1, _BLOCK)[local]
                at += len(part)
        self._steps.reshape(-1, _BLOCK)[wide] = 0  # their wrapped steps are never read

    def nbytes(self) -> int:
        held = (self._base, self._steps, self._wide_at, self._wide)
        return sum(array.nbytes for array in held) + self._wide_blocks.nbytes()

    def __getitem__(self, slots: np.ndarray) -> np.ndarray:
        values = self._base[slots >> _BLOCK_BITS] + self._steps[slots]
        if len(self._wide):
            wide = np.flatnonzero(self._wide_blocks[slots >> _BLOCK_BITS])
            held = np.searchsorted(self._wide_at, slots[wide] >> _BLOCK_BITS)
            values[wide] = self._wide[held, slots[wide] & (_BLOCK - 1)]
        return values

    def find(self, values: np.ndarray, count: int) -> np.ndarray:
        """Where each of ``values`` is among the first ``count`` (one piece, each value
        once), or -1: its block by the bases, then its place among the block's values."""
        found = np.full(len(values), -1, dtype=np.int64)
        if not len(self._steps):
            return found
        if len(values) == 1:  # a key added or removed: without arrays made for it
            found[0] = self.find_one(int(values[0]), count)
            return found
        blocks = self._steps.reshape(-1, _BLOCK)
        for start in range(0, len(values), _FOUND_AT_ONCE):
            wanted = values[start : start + _FOUND_AT_ONCE]
            block = np.searchsorted(self._base, wanted, side="right") - 1
            block[block < 0] = 0  # below every value: not in the first block either
            held = self._base[block, None] + blocks[block]
            if len(self._wide):
                wide = np.flatnonzero(self._wide_blocks[block])
                held[wide] = self._wide[np.searchsorted(self._wide_at, block[wide])]
            place = np.minimum((held < wanted[:, None]).sum(axis=1), _BLOCK - 1)
            row = (block << _BLOCK_BITS) + place
            hit = (held[np.arange(len(wanted)), place] == wanted) & (row < count)
            found[start : start + len(wanted)][hit] = row[hit]
        return found

    def find_one(self, value: int, count: int) -> int:
        """``find`` for one value."""
        if not len(self._steps):
            return -1
        block = int(np.searchsorted(self._base, value, side="right")) - 1
        if block < 0:
            return -1
        if self._wide_blocks.is_set(block):
            held = self._wide[int(np.searchsorted(self._wide_at, block))]
            step = value
        else:
            held = self._steps[block << _BLOCK_BITS : (block + 1) << _BLOCK_BITS]
            step = value - int(self._base[block])
            if step > np.iinfo(held.dtype).max:
                return -1
        place = int(np.searchsorted(held, held.dtype.type(step)))
        row = (block << _BLOCK_BITS) + place
        return row if place < _BLOCK and row < count and held[place] == step else -1


def _whole_blocks(values: np.ndarray) -> np.ndarray:
    """Non-decreasing ``values`` as int64, the last repeated up to a whole block."""
    padded = np.empty(-(-len(values) // _BLOCK) * _BLOCK, dtype=np.int64)
    padded[: len(values)] = values
    padded[len(values) :] = values[-1] if len(values) else 0
    return padded


class _Plan:
    """For one radius: each slot to look up, as the chunk it belongs to, the bits flipped
    in the query's chunk value, and where that chunk's offsets begin; in two lists, the
    slots of chunks whose runs hold row numbers (``numbered``) and those of the chunk whose
    run holds codes (``held``, None where none does)."""

    def __init__(self, chunk: np.ndarray, flips: np.ndarray, tables: _Tables) -> None:
        base = np.asarray(tables.offset_base, dtype=np.int64)
        held = chunk == tables.coded

        def part(kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return chunk[kept], base[chunk[kept]], flips[kept]

        self.numbered = part(~held)
        self.held = part(held) if held.any() else None

    @staticmethod
    def slots(values: np.ndarray, part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """The slots of one list for each query (a row of them a query), from the queries'
        chunk values (see _Tables.values)."""
        chunk, base, flips = part
        slots = values[:, chunk]
        slots ^= flips
        slots += base
        return slots

    @classmethod
    def make(cls, tables: _Tables, radius: int) -> "_Plan | None":
        reaches = _reaches(tables.widths, radius)
        if not _tabled(tables.widths, tables.count, radius):
            return None
        masks = [_masks(width, reach) for _, width, reach in reaches]
        chunk = [
            np.full(len(mask), index) for (index, _, _), mask in zip(reaches, masks, strict=True)
        ]
        return cls(np.concatenate(chunk), np.concatenate(masks), tables)


def _held_chunk(widths: list[int], count: int, radius: int | None) -> int | None:
    """The chunk of one-word codes whose run holds the codes rather than their rows: the
    one past the first (which finds rows back) in which a search at ``radius`` finds the
    most, where that is at least _HELD rows a query, read at random otherwise."""
    if radius is None or len(widths) < 2 or not _tabled(widths, count, radius):
        return None
    found = {
        index: _found(width, reach, count)[1] for index, width, reach in _reaches(widths, radius)
    }
    found.pop(0, None)
    heaviest = max(found, key=lambda index: found[index], default=None)
    return heaviest if heaviest is not None and found[heaviest] >= _HELD else None


def _reaches(widths: list[int], radius: int) -> list[tuple[int, int, int]]:
    """(chunk, width, flips) for each chunk a search at ``radius`` looks up: a code within
    it has at least one chunk within that many flips of the query's."""
    spread, extra = divmod(radius, len(widths))
    reaches = [
        (index, width, min(spread if index <= extra else spread - 1, width))
        for index, width in enumerate(widths)
    ]
    return [(index, width, reach) for index, width, reach in reaches if reach >= 0]


def _found(width: int, reach: int, count: int) -> tuple[int, float]:
    """The slots a query looks up in a chunk ``width`` bits wide within ``reach`` flips,
    and the rows it finds there, of ``count`` random codes."""
    slots = sum(math.comb(width, flips) for flips in range(reach + 1))
    return slots, slots * count / (1 << width)


def _tabled(widths: list[int], count: int, radius: int) -> bool:
    """Whether a search at ``radius`` is cheaper through the chunk tables than by reading
    every code. A slot looked up or a row checked at random costs about twenty times a
    row read in order (31 and 108 ns beside 1.5 and 6, 64 and 256-bit codes, 100k of
    them): past a twentieth of the rows, reading every one is cheaper."""
    looked_up = sum(
        sum(_found(width, reach, count)) for _, width, reach in _reaches(widths, radius)
    )
    return looked_up * 20 <= count


@cache
def _masks(width: int, flips: int) -> np.ndarray:
    """Every ``width``-bit value with at most ``flips`` bits set."""
    masks = [0]
    frontier = [0]
    for _ in range(flips):
        frontier = sorted(
            {mask | (1 << bit) for mask in frontier for bit in range(width) if not mask >> bit & 1}
        )
        masks.extend(frontier)
    return np.asarray(masks, dtype=np.int64)


def pack_pairs(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """``high`` (64-bit unsigned, each below 2**32; changed in place and returned) with
    ``low`` (each below 2**32) below it in each integer. One sort then orders the pairs by
    high, ties by low, and numpy sorts 64-bit integers with SIMD instructions where the
    CPU has them (10M pairs: 0.1-0.25 s, beside 0.8 s by a radix sort of 16 bits at a
    time); ``astype(np.uint32)`` gives the lows back."""
    high <<= np.uint64(32)
    high |= low
    return high


def _by_value(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` (below 2**32) in order of their ``values`` (as ``_chunk`` gives them, whose
    memory this takes over), ties in row order."""
    packed = pack_pairs(values.view(np.uint64), rows)
    packed.sort()
    packed &= np.uint64(0xFFFF_FFFF)
    return packed


def _chunk(codes: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits ``start`` to ``start + width`` (from the most significant bit of the first
    word) of each row, as integers: worked out in the one array returned, since at
    millions of rows each temporary costs more than the arithmetic."""
    word, shift = divmod(start, 64)
    following = word + 1 if shift + width > 64 else None
    return _top_bits(codes, word, following, np.uint64(shift), np.uint64(width))


def _top_bits(codes: np.ndarray, word: Any, following: Any, shift: Any, width: Any) -> np.ndarray:
    """``width`` bits of each row from ``shift`` bits into its ``word``, running on into
    word ``following`` (None: they do not), as integers: the top bits of the 64 from
    there. For one chunk, or for several at once as arrays (a column of values each)."""
    top = codes[:, word] << shift
    if following is not None:  # numpy shifts by 64 give 0: a shift of 0 takes nothing
        top |= codes[:, following] >> (64 - shift)
    top >>= 64 - width
    return top.view(np.int64)
