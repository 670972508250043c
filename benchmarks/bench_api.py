"""How fast the API answers, over real HTTP, with a large bank.

    DATABASE_URL=postgres://... .venv/bin/python -m benchmarks.bench_api \
        [--bans 1000000] [--lookups 2000] [--images DIR]

Imports --bans random PDQ hashes into a bank of a throwaway database (``<name>_bench``
beside DATABASE_URL's, made and dropped; SQLite in a temporary folder without one),
starts gunicorn as the web unit runs it (one process, database connections kept as
the example environment file keeps them), and times:

- ``GET /m/lookup`` of random hashes, a tenth of them within a few bits of a ban, beside
  the index's query alone (the least any lookup costs) in the same run;
- ``POST /m/lookup`` of each image in --images (the whole two-stage decision), beside
  what a worker's task spends on the same file against the same blocklist (claiming,
  reading, decoding, both stages, writing the decision).

Figures only; nothing is asserted.
"""

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.database import throwaway_database

ROOT = Path(__file__).resolve().parents[1]


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.2f} ms, p99 {p99 * 1000:6.2f} ms, "
        f"max {ordered[-1] * 1000:6.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "corpus")
    args = parser.parse_args()
    with throwaway_database("api") as data_dir:
        from django.db import connection

        from moderation import services

        rng = random.Random(1)
        bans = [rng.randbytes(32).hex() for _ in range(args.bans)]
        started = time.perf_counter()
        services.bank_import(lines=(f"pdq {code}\n" for code in bans), bank="bench", fmt="hma")
        print(f"{args.bans:,} PDQ bans imported in {time.perf_counter() - started:.1f} s")
        images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".png"})
        for path in images[::4]:  # some of the images are banned, with their features
            services.banned_add_image(data=path.read_bytes())
        _, secret = services.apitoken_create(name="bench", scope="write", actor=None)
        connection.close()

        port = _free_port()
        # As config/systemd/hashguard.env.example runs it: connections kept for a minute.
        env = {**os.environ, "HASHGUARD_DATA_DIR": str(data_dir), "DATABASE_CONN_MAX_AGE": "60"}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--no-control-socket",
                "--timeout",
                "600",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            lookups(f"http://127.0.0.1:{port}", secret, bans, args.lookups, rng)
            images_compared(f"http://127.0.0.1:{port}", secret, images)
        finally:
            server.terminate()
            server.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _flip(code: str, bits: int, rng: random.Random) -> str:
    value = int(code, 16)
    for bit in rng.sample(range(256), bits):
        value ^= 1 << bit
    return f"{value:064x}"


def lookups(base: str, secret: str, bans: list[str], count: int, rng: random.Random) -> None:
    import requests

    from hashes.index import HammingIndex

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {secret}"
    deadline = time.monotonic() + 600
    started = time.perf_counter()
    while True:  # ready once /status says the blocklist is loaded
        try:
            if session.get(f"{base}/status", timeout=60).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not become ready in 10 minutes")
        time.sleep(0.1)
    built = time.perf_counter() - started
    print(f"  server start to ready (/status 200, the blocklist loaded): {built:.1f} s")
    queries = [
        _flip(rng.choice(bans), rng.randint(0, 20), rng)
        if index % 10 == 0
        else rng.randbytes(32).hex()
        for index in range(count)
    ]
    times, hits = [], 0
    for query in queries:
        started = time.perf_counter()
        response = session.get(
            f"{base}/m/lookup", params={"signal_type": "pdq", "signal": query}, timeout=60
        )
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        hits += bool(response.json())
    print(f"GET /m/lookup, {count:,} queries against {len(bans):,} PDQ bans ({hits} found):")
    print(f"  over HTTP:        {percentiles(times)}")
    index = HammingIndex(256)
    for key, code in enumerate(bans):
        index.add(key, code)
    alone = []
    for query in queries[:500]:
        started = time.perf_counter()
        index.query(query, 31)
        alone.append(time.perf_counter() - started)
    print(f"  the index alone:  {percentiles(alone)}")
    print(
        f"  HTTP, token, database and JSON add "
        f"{(statistics.median(times) - statistics.median(alone)) * 1000:.2f} ms at the median"
    )
    # A ban added through the API, and the next lookups: the change is applied in place
    # by the server's process, where it used to build its whole blocklist again.
    seen = []
    for _ in range(5):
        code = rng.randbytes(32).hex()
        session.post(f"{base}/c/bank/bench/signal", json={"pdq": code}, timeout=60)
        started = time.perf_counter()
        found = session.get(
            f"{base}/m/lookup", params={"signal_type": "pdq", "signal": code}, timeout=600
        ).json()
        seen.append(time.perf_counter() - started)
        assert found, "a hash just added was not found"
    print(
        f"  a hash added through the API, then looked up: {statistics.median(seen) * 1000:.1f} ms"
        f" at the median of {len(seen)} (building the blocklist at start took {built:.1f} s)"
    )


def images_compared(base: str, secret: str, images: list[Path]) -> None:
    import requests

    from moderation import files, services
    from moderation.blocklist import current_blocklist

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {secret}"
    over_http, in_worker = [], []
    files.ensure_directories()
    current_blocklist()  # as a running worker has it
    for index, path in enumerate(images):
        data = path.read_bytes()
        # What a worker's task does with the same file: claim, read, digests, decode,
        # both stages, and write the decision (and move it, when banned).
        dropped = files.media_dir() / f"{index}{path.suffix}"
        dropped.write_bytes(data)
        upload, _ = services.upload_register(path=dropped)
        started = time.perf_counter()
        services.upload_process(upload_id=upload.pk)
        in_worker.append(time.perf_counter() - started)
        started = time.perf_counter()
        response = session.post(f"{base}/m/lookup", files={"photo": data}, timeout=120)
        over_http.append(time.perf_counter() - started)
        response.raise_for_status()
    print(f"POST /m/lookup, {len(images)} images (the same blocklist):")
    print(f"  over HTTP:               {percentiles(over_http)}")
    print(f"  a worker's task:         {percentiles(in_worker)}")
    print(
        f"  ratio at the median: {statistics.median(over_http) / statistics.median(in_worker):.2f}"
    )


if __name__ == "__main__":
    main()
