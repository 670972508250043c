"""Memory, build time and lookup speed of the Detector that every worker holds, with N
hash-only bans (PDQ, pHash and dHash each, as an imported hash list gives them).

    .venv/bin/python -m benchmarks.bench_detector [--n 1000000] [--lookups 200]

Bans are streamed into the detector as the blocklist build streams database rows. Prints
the resident memory the detector added, what its arrays hold, the build time, and
``Detector.lookup`` times for fingerprints near a ban (found) and random ones (not
found, most uploads), against a full scan of the same PDQ codes for scale.
"""

import argparse
import gc
import statistics
import time
from collections.abc import Iterator

import numpy as np

from benchmarks.bench_index import flipped, rss_mb
from hashes.algorithms import Fingerprint
from hashes.detect import BannedPicture, Detector
from hashes.index import encode
from hashes.matching import MatchRule


def _codes(rng: np.random.Generator, n: int, words: int) -> np.ndarray:
    return rng.integers(0, 2**64, (n, words), dtype=np.uint64)


def _fingerprint(pdq: np.ndarray, phash: np.ndarray, dhash: np.ndarray) -> Fingerprint:
    hashes = {"phash": encode(phash), "dhash": encode(dhash), "pdq": encode(pdq)}
    return Fingerprint(hashes=hashes, pdq_quality=100)


def _pictures(
    pdq: np.ndarray, phash: np.ndarray, dhash: np.ndarray
) -> Iterator[tuple[int, BannedPicture]]:
    for key in range(len(pdq)):
        yield key + 1, BannedPicture(_fingerprint(pdq[key], phash[key], dhash[key]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="bans")
    parser.add_argument("--lookups", type=int, default=200, help="lookups to time")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    pdq, phash, dhash = _codes(rng, args.n, 4), _codes(rng, args.n, 1), _codes(rng, args.n, 1)
    codes_mb = (pdq.nbytes + phash.nbytes + dhash.nbytes) / 2**20

    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    detector = Detector(MatchRule())
    collecting = gc.isenabled()
    gc.disable()  # as the blocklist build does
    detector.add_all(_pictures(pdq, phash, dhash))
    if collecting:
        gc.enable()
    build_s = time.perf_counter() - started
    gc.collect()
    grew = rss_mb() - before
    held = detector._store.nbytes() / 2**20  # noqa: SLF001 (what the arrays hold)
    print(
        f"{args.n:,} bans: build {build_s:.1f} s ({build_s / args.n * 1e6:.1f} us a ban), "
        f"resident memory +{grew:.0f} MB, arrays {held:.0f} MB "
        f"({held * 2**20 / args.n:.0f} bytes a ban; the raw codes are {codes_mb:.0f} MB)"
    )

    half = args.lookups // 2
    found = [
        _fingerprint(flipped(pdq[key], 8, rng), flipped(phash[key], 2, rng), dhash[key])
        for key in rng.integers(0, args.n, half)
    ]
    missing = [
        _fingerprint(*(_codes(rng, 1, words)[0] for words in (4, 1, 1)))
        for _ in range(args.lookups - half)
    ]
    word_major = np.ascontiguousarray(pdq.T)
    for name, probes in (("near a ban", found), ("random", missing)):
        detector.lookup(probes[0])
        timings, hits = [], 0
        for probe in probes:
            started = time.perf_counter()
            hits += bool(detector.lookup(probe))
            timings.append((time.perf_counter() - started) * 1000)
        scan = []
        for probe in probes[:10]:
            query = np.frombuffer(bytes.fromhex(probe.hashes["pdq"]), ">u8").astype(np.uint64)
            started = time.perf_counter()
            distance = sum(np.bitwise_count(word_major[w] ^ query[w]) for w in range(4))
            np.flatnonzero(distance <= 31)
            scan.append((time.perf_counter() - started) * 1000)
        timings.sort()
        print(
            f"  lookup, {name:<10}: p50 {statistics.median(timings):6.2f} ms, "
            f"p99 {timings[min(len(timings) - 1, round(len(timings) * 0.99))]:6.2f} ms, "
            f"{hits}/{len(probes)} found; a full PDQ scan alone takes "
            f"{statistics.median(scan):.1f} ms"
        )


if __name__ == "__main__":
    main()
