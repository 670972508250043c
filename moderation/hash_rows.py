"""Banned fingerprints known by their hashes alone, read from the database as columns.

Hash lists bring millions of rows, and every process reads them all when it builds its
blocklist. A row at a time costs a Python tuple and its objects; on PostgreSQL a batch of
rows comes instead as one row of joined columns, which numpy reads whole, and the id
range is read in parts, each on a connection of its own, so that the server's work (most
of it) runs in parallel. ``benchmarks/bench_build.py`` prints the figures.
"""

import contextlib
import functools
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
from django.db import connections
from django.db.models import Max, Min, QuerySet

from hashes.algorithms import ALGORITHMS
from hashes.detect import HashRows
from hashes.index import decode_joined
from moderation.models import BannedFingerprint

BATCH = 100_000
# Parts of the id range read at once, each by a PostgreSQL server process of its own.
READERS = 2
# The hash columns are named as the algorithms.
_COLUMNS = ("id", *ALGORITHMS, "pdq_quality")
_WORDS = [spec.bits // 64 for spec in ALGORITHMS.values()]


def hash_rows(selected: "QuerySet[BannedFingerprint]") -> Iterator[HashRows]:
    """The rows ``selected``, in batches, in no particular order."""
    if connections[selected.db].vendor == "postgresql":
        return joined_rows(selected)
    return fetched_rows(selected)


def fetched_rows(selected: "QuerySet[BannedFingerprint]") -> Iterator[HashRows]:
    """The rows ``selected``, a row at a time, with a server-side cursor where the
    database has them."""
    sql, params = selected.order_by().values_list(*_COLUMNS).query.sql_with_params()
    with connections[selected.db].chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(BATCH):
            keys, *codes, quality = zip(*batch, strict=True)
            yield HashRows.from_hex(keys, dict(zip(ALGORITHMS, codes, strict=True)), quality)


# One row for a batch: its size, its last id, and its columns joined: ids and qualities
# as big-endian binary, which hashes each row has (a digit, one bit each), and the hashes
# themselves, one after the other.
_PRESENT = " + ".join(f"({name} <> '')::int * {1 << bit}" for bit, name in enumerate(ALGORITHMS))
_JOINED = (
    "count(*), max(id), string_agg(int8send(id), ''), "
    "string_agg(int4send(coalesce(pdq_quality::int4, -1)), ''), "
    f"string_agg(chr(48 + {_PRESENT}), ''), string_agg({' || '.join(ALGORITHMS)}, '')"
)


def joined_rows(selected: "QuerySet[BannedFingerprint]") -> Iterator[HashRows]:
    """``fetched_rows`` on PostgreSQL: a batch of rows read as one, the id range in
    READERS parts at once. Within a transaction, on its connection, in one part: no other
    connection would see its rows."""
    bounds = selected.aggregate(low=Min("pk"), high=Max("pk"))
    if bounds["low"] is None:
        return iter(())
    low, high = bounds["low"] - 1, bounds["high"]
    if connections[selected.db].in_atomic_block:
        return _pages(selected, low, high)
    return _merged([functools.partial(_pages, selected, *part) for part in parts(low, high)])


def parts(low: int, high: int) -> list[tuple[int, int]]:
    """The id range above ``low`` up to ``high`` in READERS parts (or fewer, as small)."""
    cuts = sorted({low + (high - low) * part // READERS for part in range(READERS + 1)})
    return list(zip(cuts, cuts[1:], strict=False))


def _pages(selected: "QuerySet[BannedFingerprint]", low: int, high: int) -> Iterator[HashRows]:
    """The rows of ids above ``low`` up to ``high``, a batch at a time: each batch the
    next BATCH ids, so that a row changed meanwhile is read once, whatever it became."""
    last = low
    while True:
        page = selected.filter(pk__gt=last, pk__lte=high).order_by("pk")
        sql, params = page.values_list(*_COLUMNS)[:BATCH].query.sql_with_params()
        with connections[selected.db].cursor() as cursor:
            cursor.execute(f"SELECT {_JOINED} FROM ({sql}) AS page", params)
            count, last, keys, qualities, present, codes = cursor.fetchone()
        if not count:
            return
        yield _batch(
            np.frombuffer(keys, dtype=">i8").astype(np.int64),
            np.frombuffer(qualities, dtype=">i4").astype(np.int32),
            np.frombuffer(present.encode(), dtype=np.uint8) - ord("0"),
            codes,
        )


def _batch(keys: np.ndarray, qualities: np.ndarray, present: np.ndarray, codes: str) -> HashRows:
    """A batch from its joined columns. Every hash is a whole number of 64-bit words,
    so the hashes joined are words, and each row's are found by counting them."""
    has = [(present >> bit) & 1 == 1 for bit in range(len(ALGORITHMS))]
    widths = sum(mask * words for mask, words in zip(has, _WORDS, strict=True))
    try:
        words = decode_joined(codes, int(widths.sum()), 64).ravel()
    except ValueError:
        raise ValueError(
            f"A malformed hash among the banned fingerprints {keys.min()} to {keys.max()}."
        ) from None
    at = np.cumsum(widths) - widths
    hashes = {}
    for name, mask, width in zip(ALGORITHMS, has, _WORDS, strict=True):
        hashes[name] = (mask, words[at[mask][:, None] + np.arange(width)])
        at += mask * width
    return HashRows(keys, hashes, qualities)


_DONE = object()


def _merged(streams: list[Callable[[], Iterator[HashRows]]]) -> Iterator[HashRows]:
    """The batches of ``streams`` as they come, each read in a thread of its own, on a
    database connection of its own; an error in one is raised here. Stopping early stops
    them all."""
    results: queue.Queue[object] = queue.Queue(maxsize=2 * len(streams))
    stop = threading.Event()

    def read(stream: Callable[[], Iterator[HashRows]]) -> None:
        try:
            for batch in stream():
                if stop.is_set():
                    return
                results.put(batch)
            results.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            results.put(exc)
        finally:
            connections.close_all()  # this thread's own

    threads = [threading.Thread(target=read, args=(stream,), daemon=True) for stream in streams]
    for thread in threads:
        thread.start()
    try:
        running = len(threads)
        while running:
            item = results.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                assert isinstance(item, HashRows)
                yield item
    finally:
        stop.set()
        while any(thread.is_alive() for thread in threads):
            with contextlib.suppress(queue.Empty):  # room for a thread handing one over
                results.get(timeout=0.1)
