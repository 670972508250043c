"""Query speed of HammingIndex, against a pure-Python scan of the same codes.

    .venv/bin/python -m benchmarks.bench_index [--n 1000000] [--queries 50]

For 256-bit codes at radius 31 (PDQ) and 64-bit codes at radius 10 (pHash, dHash): builds
an index of N random codes, times queries near stored codes, then times a loop of
``int.bit_count`` over Python ints on a subset and scales it to N for the speedup.
"""

import argparse
import random
import statistics
import time

from hashes.index import HammingIndex

CASES = ((256, 31), (64, 10))


def _near(code: int, bits: int, rng: random.Random) -> int:
    for position in rng.sample(range(bits), rng.randrange(16)):
        code ^= 1 << position
    return code


def _python_scan(codes: list[int], query: int, radius: int) -> list[tuple[int, int]]:
    found = []
    for key, code in enumerate(codes):
        distance = (code ^ query).bit_count()
        if distance <= radius:
            found.append((key, distance))
    return sorted(found, key=lambda item: (item[1], item[0]))


def _bench(bits: int, radius: int, n: int, queries: int, baseline_n: int) -> None:
    rng = random.Random(bits)
    digits = bits // 4
    codes = [rng.getrandbits(bits) for _ in range(n)]
    index = HammingIndex(bits)
    started = time.perf_counter()
    for key, code in enumerate(codes):
        index.add(key, f"{code:0{digits}x}")
    build_s = time.perf_counter() - started

    probes = [_near(rng.choice(codes), bits, rng) for _ in range(queries)]
    index.query(f"{probes[0]:0{digits}x}", radius)  # first call pays one-off allocations
    timings = []
    for probe in probes:
        started = time.perf_counter()
        index.query(f"{probe:0{digits}x}", radius)
        timings.append(time.perf_counter() - started)
    index_ms = statistics.median(timings) * 1000

    subset = codes[: min(n, baseline_n)]
    baseline = []
    for probe in probes[:5]:
        started = time.perf_counter()
        _python_scan(subset, probe, radius)
        baseline.append(time.perf_counter() - started)
    baseline_ms = statistics.median(baseline) * 1000 * n / len(subset)

    print(
        f"{bits:>4} bits  radius {radius:>2}  n={n:>9,}  build {build_s:6.2f} s "
        f"({build_s / n * 1e6:4.1f} us/add)  index {index_ms:8.2f} ms/query  "
        f"python {baseline_ms:9.1f} ms/query (scaled from {len(subset):,})  "
        f"speedup {baseline_ms / index_ms:6.0f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="codes in the index")
    parser.add_argument("--queries", type=int, default=50, help="queries to time")
    parser.add_argument(
        "--baseline-n", type=int, default=100_000, help="codes the Python loop scans"
    )
    args = parser.parse_args()
    for bits, radius in CASES:
        _bench(bits, radius, args.n, args.queries, args.baseline_n)


if __name__ == "__main__":
    main()
