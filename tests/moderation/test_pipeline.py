"""The whole pipeline, for real: a watcher process, a Celery worker process, a broker.

With PostgreSQL and Redis as in production, and with the embedded default (SQLite and
the file broker, no server at all), started the way the README starts it.
"""

import json
import os
import random
import signal
import socket
import stat
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from PIL import Image

from moderation import liveness, selectors, services
from moderation.models import AuditEvent, Upload
from tests.images import encode, photo
from tests.moderation.conftest import REDIS_URL
from tests.moderation.processes import Stack, children, database_url, wait_for
from tests.moderation.support import PDQ

pytestmark = pytest.mark.pipeline

DECIDED = {
    Upload.State.CLEAN,
    Upload.State.QUARANTINED,
    Upload.State.HELD,
    Upload.State.ERROR,
    Upload.State.NOT_IMAGE,
}


def decided(path: str) -> Upload | None:
    upload = Upload.objects.filter(path=path).order_by("-id").first()
    return upload if upload and upload.state in DECIDED else None


def wait_decided(*paths: str, timeout: float = 60) -> dict[str, Upload]:
    wait_for(lambda: all(decided(p) for p in paths), timeout=timeout, what=f"{paths} decided")
    return {path: decided(path) for path in paths}


@pytest.fixture
def stack(transactional_db, stores: Path, redis_broker: str) -> Stack:
    stack = Stack(stores, database_url=database_url(), broker_url=redis_broker)
    yield stack
    stack.stop()


def test_watcher_and_worker_quarantine_banned_images_and_keep_going(stack: Stack) -> None:
    media = stack.data_dir / "media"
    services.banned_add_image(data=encode(photo("astronaut"), "JPEG"), category="nudity")
    worker = stack.worker()
    stack.watcher()

    # A resized, recompressed copy of the banned image, copied in.
    resized = photo("astronaut").resize((200, 200))
    (media / "resized.jpg").write_bytes(encode(resized, "JPEG", quality=60))
    # An unrelated image, written under a temporary name in a new subdirectory, renamed.
    (media / "2026" / "11").mkdir(parents=True)
    partial = media / "2026" / "11" / "coffee.png.part"
    photo("coffee").save(partial, "PNG")
    partial.rename(media / "2026" / "11" / "coffee.png")
    # A file cut short, and one whose header is cut: checked as far as it goes, or held.
    (media / "cut.jpg").write_bytes(encode(photo("rocket"), "JPEG")[:3000])
    (media / "broken.jpg").write_bytes(encode(photo("rocket"), "JPEG")[:300])
    # A banned image written slowly, in pieces with pauses between them.
    data = encode(photo("astronaut"), "JPEG", quality=90)
    with open(media / "slow.jpg", "wb") as handle:
        for start in range(0, len(data), len(data) // 4 + 1):
            handle.write(data[start : start + len(data) // 4 + 1])
            handle.flush()
            time.sleep(0.3)

    uploads = wait_decided(
        "resized.jpg", "2026/11/coffee.png", "cut.jpg", "broken.jpg", "slow.jpg"
    )
    assert uploads["resized.jpg"].state == Upload.State.QUARANTINED, stack.logs()
    assert uploads["slow.jpg"].state == Upload.State.QUARANTINED
    assert uploads["2026/11/coffee.png"].state == Upload.State.CLEAN
    assert uploads["cut.jpg"].state == Upload.State.CLEAN
    assert "cut short" in uploads["cut.jpg"].error
    assert uploads["broken.jpg"].state == Upload.State.HELD
    assert uploads["broken.jpg"].error_code == "corrupt"

    # Quarantined and held files left the media tree and are private to the service user.
    for path in ("resized.jpg", "slow.jpg", "broken.jpg"):
        upload = uploads[path]
        assert not (media / path).exists()
        moved = stack.data_dir / "quarantine" / upload.quarantine_name
        assert stat.S_IMODE(moved.stat().st_mode) == 0o600
    assert (media / "2026" / "11" / "coffee.png").exists()
    queued = {u.path: u for u in selectors.review_queue()}
    assert set(queued) == {"resized.jpg", "slow.jpg", "broken.jpg"}
    match = queued["resized.jpg"].matches.get()
    assert set(match.distances) == {"phash", "dhash", "pdq"}
    assert match.distances["pdq"] <= 31

    # A fingerprint added while the worker runs is used for the very next file.
    services.banned_add_image(data=encode(photo("chelsea"), "JPEG"), category="scam")
    photo("chelsea").resize((300, 250)).save(stack.data_dir / "chelsea.webp", "WEBP")
    os.rename(stack.data_dir / "chelsea.webp", media / "chelsea.webp")  # mv from elsewhere
    later = wait_decided("chelsea.webp")
    assert later["chelsea.webp"].state == Upload.State.QUARANTINED, stack.logs()

    # Each file was recorded once and fingerprinted once.
    assert Upload.objects.count() == 6
    assert set(Upload.objects.values_list("attempts", flat=True)) == {1}
    assert worker.popen.poll() is None


def test_uploads_wait_out_a_broker_outage(stack: Stack) -> None:
    media = stack.data_dir / "media"
    stack.env["CELERY_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    watcher = stack.watcher()
    photo("coffee").save(media / "coffee.jpg", "JPEG")
    upload = wait_for(
        lambda: Upload.objects.filter(path="coffee.jpg", error_code="queue_unavailable").first(),
        timeout=60,
        what="the outage to be recorded",
    )
    assert upload.state == Upload.State.PENDING
    assert "task queue" in upload.error
    assert watcher.popen.poll() is None, "the watcher must survive the outage"
    watcher.stop()

    stack.env["CELERY_BROKER_URL"] = REDIS_URL
    stack.processes.clear()
    stack.worker()
    stack.watcher()
    assert wait_decided("coffee.jpg")["coffee.jpg"].state == Upload.State.CLEAN


def test_scan_waits_until_a_backlog_is_decided(stack: Stack) -> None:
    services.banned_add_image(data=encode(photo("astronaut"), "JPEG"))
    backlog = stack.data_dir / "media" / "backlog"
    backlog.mkdir()
    for name in ("coffee", "rocket", "chelsea"):
        photo(name).save(backlog / f"{name}.jpg", "JPEG")
    photo("astronaut").resize((320, 320)).save(backlog / "astronaut.png", "PNG")
    stack.worker()
    code, output = stack.manage_in_terminal("scan", str(backlog), "--timeout", "90")
    assert code == 0, output + stack.logs()
    assert "4 files: 3 clean, 1 quarantined" in output
    assert "deciding: 100%" in output  # the progress bar


def test_a_worker_keeps_its_database_connection_from_task_to_task(stack: Stack) -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("counts connections in PostgreSQL's pg_stat_activity")
    # As the production environment file sets; the worker's connections are named.
    stack.env["DATABASE_CONN_MAX_AGE"] = "60"
    url = stack.env["DATABASE_URL"]
    stack.env["DATABASE_URL"] = f"{url}?application_name=hashguard-worker"
    stack.worker()
    stack.env["DATABASE_URL"] = url
    stack.watcher()

    def worker_connections() -> set[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'hashguard-worker' AND query LIKE %s",
                ["%moderation_upload%"],
            )
            return {pid for (pid,) in cursor.fetchall()}

    media = stack.data_dir / "media"
    photo("coffee").save(media / "first.jpg", "JPEG")
    wait_decided("first.jpg")
    kept = wait_for(worker_connections, what="the worker's connection, kept after its task")
    for index, name in enumerate(("rocket", "chelsea", "astronaut")):
        photo(name).save(media / f"next-{index}.jpg", "JPEG")
        wait_decided(f"next-{index}.jpg")
    assert worker_connections() == kept, stack.logs()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_embedded_default_runs_without_any_server(tmp_path: Path) -> None:
    """SQLite and the file broker, started by the README's `embedded` command."""
    stack = Stack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'hashguard.sqlite3'}",
        broker_url="filesystem://",
    )
    stack.env.pop("CELERY_BROKER_URL")
    stack.env.pop("DATABASE_URL")
    stack.env["DJANGO_SECRET_KEY"] = ""
    port = free_port()
    try:
        app = stack.start(
            "embedded", "manage.py", "embedded", "--port", str(port), "--concurrency", "1"
        )
        app.wait_for_log("Press Ctrl-C to stop", timeout=120)
        assert "Log in as admin / " in app.log()
        app.wait_for_log("ready.")
        app.wait_for_log("watching")

        banned = tmp_path / "banned.jpg"
        photo("astronaut").save(banned, "JPEG")
        result = stack.manage("ban", str(banned), "--category", "nudity")
        assert result.returncode == 0, result.stderr
        media = tmp_path / "media"
        photo("astronaut").resize((256, 256)).save(media / "copy.png", "PNG")
        photo("coffee").save(media / "coffee.jpg", "JPEG")

        def states() -> dict[str, str] | None:
            listed = stack.manage("uploads", "--json")
            rows = {row["path"]: row["state"] for row in json.loads(listed.stdout)}
            return rows if len(rows) == 2 and set(rows.values()) <= DECIDED else None

        assert wait_for(states, timeout=60, what="both uploads decided") == {
            "copy.png": "quarantined",
            "coffee.jpg": "clean",
        }, stack.logs()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/") as response:
            assert response.status == 200
        # Other services ask the API, on SQLite too: a list imported, a token made.
        hashes = tmp_path / "list.txt"
        hashes.write_text(f"pdq {PDQ}\n")
        assert stack.manage("hashlist", "import", str(hashes), "--bank", "partner").returncode == 0
        secret = stack.manage("apitoken", "create", "site").stdout.strip()
        api = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {secret}"}
        found = requests.get(
            f"{api}/m/lookup", params={"signal_type": "pdq", "signal": PDQ}, headers=headers
        )
        assert list(found.json()) == ["partner"], found.text
        decided = requests.post(
            f"{api}/m/lookup",
            files={"photo": encode(photo("astronaut").resize((300, 300)), "JPEG")},
            headers=headers,
        )
        assert decided.json()["decision"] == "quarantine", decided.text
        wait_for(
            lambda: requests.get(f"{api}/status", timeout=30).status_code == 200,
            timeout=60,
            what="/status ready",
        )
        # The worker's pool process wrote what it counted (on SQLite too).
        wait_for(
            lambda: 'hashguard_decisions_total{state="quarantined"} 1'
            in requests.get(f"{api}/metrics", headers=headers, timeout=30).text,
            timeout=60,
            what="the worker's decisions in /metrics",
        )
        # Nothing shared with other instances: gunicorn's per-user control socket is off.
        assert not (Path.home() / ".gunicorn" / "gunicorn.ctl").exists()

        # What only hashguard may read is private: the database, the queue, the key.
        for private in (tmp_path, tmp_path / "broker", tmp_path / "broker" / "queue"):
            assert stat.S_IMODE(private.stat().st_mode) == 0o700, private
        for private in (tmp_path / "hashguard.sqlite3", tmp_path / "secret_key"):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600, private

        # A worker that dies is started again by the embedded runner.
        [worker] = [
            pid
            for pid in liveness.children_of(app.popen.pid)
            if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        os.killpg(worker, signal.SIGKILL)
        app.wait_for_log("the worker stopped (exit code -9); starting it again")
        photo("rocket").save(media / "rocket.jpg", "JPEG")
        wait_for(
            lambda: "rocket.jpg" in stack.manage("uploads", "--state", "clean").stdout,
            timeout=120,
            what="a file decided by the restarted worker",
        )
        assert app.stop(signal.SIGINT) == 0, app.log()
        assert "hashguard stopped." in app.log()
    finally:
        stack.stop()


def test_chaos_killing_the_worker_during_a_burst_loses_nothing(stack: Stack) -> None:
    """500 files arrive; the worker's main process and pool processes are killed with
    SIGKILL mid-burst, as a crash or OOM kill would. After a restart every file is
    decided, once, within two minutes."""
    stack.env["HASHGUARD_REQUEUE_SECONDS"] = "20"
    services.banned_add_image(data=encode(photo("astronaut"), "JPEG"), category="nudity")
    media = stack.data_dir / "media"
    staging = stack.data_dir / "staging"
    staging.mkdir()
    worker = stack.worker(concurrency=2)
    stack.watcher()
    rng = random.Random(5)
    banned = {f"burst/{index:03}.jpg" for index in range(0, 500, 50)}
    (media / "burst").mkdir()
    for index in range(500):
        name = f"burst/{index:03}.jpg"
        if name in banned:
            image = photo("astronaut").resize((120 + index // 10, 120 + index // 10))
        else:
            image = Image.frombytes("RGB", (40, 40), rng.randbytes(40 * 40 * 3))
        image.save(staging / "next.jpg", "JPEG")
        os.rename(staging / "next.jpg", media / name)  # write-then-rename, as servers do
        if index == 150:
            wait_for(
                lambda: Upload.objects.filter(state__in=DECIDED).count() >= 50,
                timeout=120,
                what="the burst under way",
            )
            os.killpg(worker.popen.pid, signal.SIGKILL)
            worker.popen.wait()
            stack.processes.remove(worker)
    stack.worker(concurrency=2)  # as its supervisor would

    wait_for(
        lambda: Upload.objects.filter(state__in=DECIDED).count() == 500,
        timeout=120,
        what="all 500 files decided within two minutes of the restart",
    )
    assert Upload.objects.count() == 500, "a file was recorded twice"
    states = dict(Upload.objects.values_list("path", "state"))
    assert {path for path, state in states.items() if state == Upload.State.QUARANTINED} == banned
    assert set(states.values()) == {Upload.State.CLEAN, Upload.State.QUARANTINED}
    # Decided once: one quarantine each, and every banned file is in quarantine.
    events = AuditEvent.objects.filter(action="upload_quarantined")
    assert events.count() == len(banned)
    for upload in Upload.objects.filter(state=Upload.State.QUARANTINED):
        assert (stack.data_dir / "quarantine" / upload.quarantine_name).exists()
        assert not (media / upload.path).exists()
    assert sum(1 for _ in (media / "burst").iterdir()) == 500 - len(banned)


def _blocklists_mapped(pid: int) -> set[str]:
    """The saved blocklists process ``pid`` maps."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[-1] for line in maps if line.rstrip().endswith(".blocklist")}


def test_a_worker_holds_one_copy_of_the_blocklist_through_a_wide_change(stack: Stack) -> None:
    """The worker's main process saves the machine's blocklist before its pool forks and
    keeps no copy; both pool processes map that file. After a wide change one pool
    process builds the new version and the other maps the file it saves."""
    from moderation.blocklist import current_version
    from moderation.models import BlocklistLoad

    services.banned_add_image(data=encode(photo("astronaut"), "JPEG"), category="nudity")
    worker = stack.worker(concurrency=2)
    stack.watcher()
    pool = children(worker.popen.pid)
    assert len(pool) == 2
    rng = random.Random(9)
    dropped = 0

    def both_hold(version: str) -> bool:
        """Whether both pool processes hold ``version``; if not, one more file."""
        nonlocal dropped
        loads = BlocklistLoad.objects.filter(version=version).values_list("process", flat=True)
        if set(pool) <= {int(name.rsplit(":", 1)[1]) for name in loads}:
            return True
        image = Image.frombytes("RGB", (40, 40), rng.randbytes(40 * 40 * 3))
        image.save(stack.data_dir / "media" / f"clean-{dropped}.jpg", "JPEG")
        dropped += 1
        return False

    def saved() -> list[str]:
        return sorted(str(path) for path in (stack.data_dir / "blocklists").rglob("*.blocklist"))

    wait_for(lambda: both_hold(current_version()), what="both pool processes to check a file")
    [first] = saved()
    assert _blocklists_mapped(worker.popen.pid) == set()
    assert all(_blocklists_mapped(pid) == {first} for pid in pool)

    services.blocklist_bump()  # a wide change, as a rehash makes
    wait_for(lambda: both_hold(current_version()), what="both pool processes to switch")
    [second] = saved()
    assert second != first and current_version() in second
    assert all(_blocklists_mapped(pid) == {second} for pid in pool)
    assert worker.log().count("built the blocklist") == 2, worker.log()  # start, the change

    copy = encode(photo("astronaut").resize((300, 300)), "JPEG", quality=85)
    (stack.data_dir / "media" / "copy.jpg").write_bytes(copy)
    assert wait_decided("copy.jpg")["copy.jpg"].state == Upload.State.QUARANTINED


def banned_gif_frame_shown_long(banned: Image.Image) -> bytes:
    """100 frames: frame 1 is the banned picture, shown for 60 s; the others 20 ms each."""
    rng = random.Random(3)
    fillers = [
        Image.frombytes("RGB", (160, 160), rng.randbytes(160 * 160 * 3)) for _ in range(99)
    ]
    durations = [20] * 100
    durations[1] = 60_000
    return encode(
        fillers[0],
        "GIF",
        save_all=True,
        append_images=[banned.resize((160, 160)), *fillers[1:]],
        duration=durations,
    )


def test_the_tricks_that_let_banned_pictures_through_no_longer_do(stack: Stack) -> None:
    """Each way a banned picture stayed on the site, through a real watcher and worker."""
    services.banned_add_image(data=encode(photo("astronaut"), "JPEG"), category="nudity")
    media = stack.data_dir / "media"
    copy = encode(photo("astronaut").resize((300, 300)), "JPEG", quality=85)
    stack.worker(concurrency=2)
    stack.watcher()

    # 1. The same path again, after the first copy was quarantined.
    (media / "x.jpg").write_bytes(copy)
    wait_for(lambda: decided("x.jpg"), what="x.jpg decided")
    (media / "x.jpg").write_bytes(copy)
    wait_for(
        lambda: Upload.objects.filter(path="x.jpg", state=Upload.State.QUARANTINED).count() == 2,
        what="the second copy at the same path quarantined",
    )
    assert not (media / "x.jpg").exists()

    # 2. Two bytes cut; 3. names the watcher once skipped; 4. a GIF frame shown long.
    names = {
        "cut.jpg": copy[:-2],
        ".hidden.jpg": copy,
        ".cache/a.jpg": copy,
        "~x.jpg": copy,
        "x.jfif": copy,
        "noextension": copy,
        "long/" + "d" * 200 + "/" + "e" * 200 + "/" + "f" * 200 + "/" + "g" * 200 + "/x.jpg": copy,
        "frames.gif": banned_gif_frame_shown_long(photo("astronaut")),
    }
    for name, data in names.items():
        (media / name).parent.mkdir(parents=True, exist_ok=True)
        (media / name).write_bytes(data)
    odd = os.path.join(os.fsencode(media), b"caf\xe9.jpg")  # not UTF-8
    with open(odd, "wb") as handle:
        handle.write(copy)
    names["caf\\xe9.jpg"] = copy

    uploads = wait_decided(*names, timeout=120)
    for name, upload in uploads.items():
        assert upload.state == Upload.State.QUARANTINED, (name, upload.error, stack.logs())
    assert not os.path.exists(odd)
    assert "frame 1" in AuditEvent.objects.get(upload=uploads["frames.gif"]).detail


def test_a_directory_swapped_for_a_symlink_before_the_worker_runs(stack: Stack) -> None:
    """Recorded by the watcher; before a worker checks it, its directory becomes a link
    to one outside the media tree. The worker moves nothing from outside."""
    services.banned_add_image(data=encode(photo("astronaut"), "JPEG"), category="nudity")
    media = stack.data_dir / "media"
    copy = encode(photo("astronaut").resize((300, 300)), "JPEG", quality=85)
    watcher = stack.watcher()
    (media / "users").mkdir()
    (media / "users" / "a.jpg").write_bytes(copy)
    wait_for(
        lambda: Upload.objects.filter(path="users/a.jpg").exists(), what="users/a.jpg recorded"
    )
    watcher.stop()
    outside = stack.data_dir / "outside"
    outside.mkdir()
    (outside / "a.jpg").write_bytes(copy)
    os.rename(media / "users", stack.data_dir / "moved-users")
    (media / "users").symlink_to(outside)
    stack.processes.clear()
    stack.worker()

    upload = wait_for(lambda: decided("users/a.jpg"), what="users/a.jpg decided")
    assert (upload.state, upload.error_code) == (Upload.State.ERROR, "unsafe_path"), upload.error
    assert (outside / "a.jpg").read_bytes() == copy
    assert not any((stack.data_dir / "quarantine").rglob("a.jpg"))


def test_a_hash_list_is_imported_by_a_real_worker(stack: Stack) -> None:
    from moderation.models import ImportJob

    stack.worker()
    lines = b"".join(b"pdq %s\n" % random.Random(i).randbytes(32).hex().encode() for i in range(50))
    job = services.import_job_create(
        chunks=[lines], bank="partner", fmt="auto", replace=False, actor=None
    )
    # Queued as the web process queues it, through the deployment's broker.
    sent = stack.manage(
        "shell", "-c", f"from moderation.tasks import run_import; run_import.delay({job.pk})"
    )
    assert sent.returncode == 0, sent.stderr
    done = wait_for(
        lambda: ImportJob.objects.filter(pk=job.pk, state=ImportJob.State.DONE).first(),
        timeout=60,
        what="the import done",
    )
    assert done.lines_done == 50 and "50 added" in done.summary, stack.logs()
