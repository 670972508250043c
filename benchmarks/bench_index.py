"""Query speed and memory of HammingIndex, beside a full numpy scan (hashguard's index
until multi-index hashing) and, when the ``faiss`` package is importable, Faiss's binary
flat and multi-hash indexes.

    .venv/bin/python -m benchmarks.bench_index [--n 1000000] [--queries 200]

For 256-bit codes at radius 31 (PDQ) and 64-bit codes at radius 10 (pHash, dHash): builds
an index of N random codes, then times queries of two kinds, half each: near a stored code
(a re-upload of a banned picture) and random (an upload that is not banned, most of
them). The index is laid out for the radius searched; for 64-bit codes, also beside one
whose tables hold row numbers only (before a chunk's codes were held for it). Every
index's results are checked against the full scan's.
"""

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import numpy as np

from hashes.index import HammingIndex

CASES = ((256, 31), (64, 10))


def rss_mb() -> float:
    """This process's resident memory."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _hex(codes: np.ndarray) -> list[str]:
    digits = codes.shape[1] * 16
    text = codes.astype(">u8").tobytes().hex()
    return [text[start : start + digits] for start in range(0, len(text), digits)]


def flipped(row: np.ndarray, flips: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of a code (a row of 64-bit words) with ``flips`` random bits flipped."""
    row = row.copy()
    for position in rng.choice(row.shape[0] * 64, flips, replace=False):
        row[position // 64] ^= np.uint64(1) << np.uint64(63 - position % 64)
    return row


def _queries(codes: np.ndarray, radius: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Half near a stored code (up to radius + 4 bits flipped), half random."""
    near = np.stack(
        [
            flipped(codes[at], rng.integers(0, radius + 5), rng)
            for at in rng.integers(0, len(codes), count // 2)
        ]
    )
    far = rng.integers(0, 2**64, (count - count // 2, codes.shape[1]), dtype=np.uint64)
    return np.concatenate([near, far])


def _scan(word_major: np.ndarray, query: np.ndarray, radius: int) -> set[int]:
    """The full scan hashguard used before: XOR and popcount one word of every code at a
    time, over word-major arrays."""
    distances = np.zeros(word_major.shape[1], dtype=np.uint16)
    scratch = np.empty(word_major.shape[1], dtype=np.uint64)
    for word in range(word_major.shape[0]):
        np.bitwise_xor(word_major[word], query[word], out=scratch)
        distances += np.bitwise_count(scratch)
    return set(np.flatnonzero(distances <= radius).tolist())


def _time(search: Callable[[int], set[int]], count: int) -> tuple[list, list]:
    """Each query's time and results, by the query's position."""
    search(0)  # one-off allocations
    timings, results = [], []
    for position in range(count):
        started = time.perf_counter()
        results.append(search(position))
        timings.append(time.perf_counter() - started)
    return timings, results


def _time_scan(codes: np.ndarray, queries: np.ndarray, radius: int) -> tuple[list, list]:
    word_major = np.ascontiguousarray(codes.T)
    return _time(lambda at: _scan(word_major, queries[at], radius), len(queries))


def _time_index(
    codes: np.ndarray, queries: np.ndarray, radius: int, layout: int | None
) -> tuple[list, list, float, float, float]:
    """Timings and results, build seconds, the arrays' MB and how much the RSS grew, of an
    index laid out for searches at ``layout``."""
    texts = _hex(codes)
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    index = HammingIndex(codes.shape[1] * 64, layout)
    index.add_many(list(range(len(codes))), texts)
    build_s = time.perf_counter() - started
    del texts
    gc.collect()
    query_hex = _hex(queries)
    timings, results = _time(
        lambda at: {key for key, _ in index.query(query_hex[at], radius)}, len(queries)
    )
    return timings, results, build_s, index.nbytes() / 2**20, rss_mb() - before


def _line(name: str, timings: list[float], build_s: float, memory_mb: float, wrong: int) -> str:
    ms = sorted(value * 1000 for value in timings)
    p99 = ms[min(len(ms) - 1, round(len(ms) * 0.99))]
    return (
        f"  {name:<28} p50 {statistics.median(ms):8.3f} ms  p99 {p99:8.3f} ms  "
        f"max {ms[-1]:8.3f} ms  build {build_s:6.1f} s  memory {memory_mb:7.0f} MB  "
        f"wrong results {wrong}"
    )


def _bench(bits: int, radius: int, n: int, count: int) -> None:
    rng = np.random.default_rng(bits)
    words = bits // 64
    codes = rng.integers(0, 2**64, (n, words), dtype=np.uint64)
    queries = _queries(codes, radius, count, rng)
    print(f"{bits} bits, radius {radius}, {n:,} codes, {count} queries (half near, half random)")

    timings, truth = _time_scan(codes, queries, radius)
    print(_line("full scan (before)", timings, 0.0, codes.nbytes / 2**20, 0))
    baseline = statistics.median(timings)

    if words == 1:  # before its tables held a chunk's codes for the radius searched
        timings, results, build_s, memory_mb, _ = _time_index(codes, queries, radius, None)
        wrong = sum(found != expected for found, expected in zip(results, truth, strict=True))
        print(_line("HammingIndex, rows only", timings, build_s, memory_mb, wrong))
        gc.collect()
    timings, results, build_s, memory_mb, grew_mb = _time_index(codes, queries, radius, radius)
    wrong = sum(found != expected for found, expected in zip(results, truth, strict=True))
    print(_line("HammingIndex (multi-index)", timings, build_s, memory_mb, wrong))
    print(
        f"  {'':<28} {baseline / statistics.median(timings):.0f}x faster than the full scan "
        f"at the median; resident memory grew {grew_mb:.0f} MB"
    )
    gc.collect()
    _bench_faiss(bits, radius, codes, queries, truth)


def _bench_faiss(
    bits: int, radius: int, codes: np.ndarray, queries: np.ndarray, truth: list[set[int]]
) -> None:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        print("  (faiss not installed: its indexes are not measured)")
        return
    faiss.omp_set_num_threads(1)
    data = codes.astype(">u8").view(np.uint8).reshape(len(codes), -1)
    probes = queries.astype(">u8").view(np.uint8).reshape(len(queries), -1)
    # Multi-hash with 16-bit tables and enough flips that the pigeonhole covers the
    # radius: nhash * (nflip + 1) > radius makes it exact.
    nhash = bits // 16
    nflip = radius // nhash
    builds = (
        ("faiss IndexBinaryFlat", lambda: faiss.IndexBinaryFlat(bits)),
        (f"faiss MultiHash {nhash}x16 f{nflip}", lambda: _multihash(faiss, bits, nhash, nflip)),
    )
    for name, build in builds:
        gc.collect()
        before = rss_mb()
        started = time.perf_counter()
        index = build()
        index.add(data)
        build_s = time.perf_counter() - started
        memory = rss_mb() - before

        def search(at: int, index=index) -> set[int]:  # noqa: ANN001
            limits, _, labels = index.range_search(probes[at : at + 1], radius + 1)
            return set(labels[limits[0] : limits[1]].tolist())

        timings, results = _time(search, len(queries))
        wrong = sum(found != expected for found, expected in zip(results, truth, strict=True))
        print(_line(name, timings, build_s, memory, wrong))
        del index


def _multihash(faiss, bits: int, nhash: int, nflip: int):  # noqa: ANN001, ANN202
    index = faiss.IndexBinaryMultiHash(bits, nhash, 16)
    index.nflip = nflip
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="codes in the index")
    parser.add_argument("--queries", type=int, default=200, help="queries to time")
    args = parser.parse_args()
    for bits, radius in CASES:
        _bench(bits, radius, args.n, args.queries)


if __name__ == "__main__":
    main()
