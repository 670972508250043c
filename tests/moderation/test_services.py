import dataclasses
import errno
import io
import os
import random
import shutil
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone
from PIL import Image, ImageOps

from hashes.algorithms import fingerprint_frames
from hashes.evaluation.edits import EDITS
from hashes.feature_index import words_from_bytes
from hashes.loading import load_image
from hashes.local import LocalFeatures
from moderation import files, selectors, services
from moderation.blocklist import build_blocklist, current_blocklist
from moderation.models import AuditEvent, BannedFingerprint, Match, Transition, Upload
from moderation.services import uploads
from tests.images import encode, photo
from tests.moderation.processes import wait_for

State = Upload.State
pytestmark = pytest.mark.django_db


def encoded(name: str, fmt: str = "JPEG", size: tuple[int, int] | None = None, **kw) -> bytes:
    image = photo(name)
    return encode(image.resize(size) if size else image, fmt, **kw)


def quarantine_by_hand(upload: Upload) -> Path:
    """Move an upload's file to where its quarantine would put it, as a worker would."""
    name = f"{upload.pk}/{Path(upload.path).name}"
    files.move_file(
        files.media_dir(),
        upload.path.encode(),
        files.quarantine_dir(),
        name.encode(),
        private=True,
    )
    return files.quarantine_dir() / name


def drop(media: Path, relative: str, data: bytes) -> Upload:
    """Put a file in the media tree and run it through the pipeline, as a worker would."""
    path = media / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    upload, _ = services.upload_register(path=path)
    return services.upload_process(upload_id=upload.pk)


@pytest.fixture
def media(stores: Path) -> Path:
    return stores / "media"


@pytest.fixture
def banned_astronaut() -> list[BannedFingerprint]:
    return services.banned_add_image(data=encoded("astronaut"), category="nudity", reason="r")


def test_register_records_each_path_and_content_once(media: Path) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    first, created = services.upload_register(path=path)
    again, created_again = services.upload_register(path=path)
    assert created and not created_again and first.pk == again.pk
    assert first.path == "a.jpg" and first.state == State.PENDING and first.size > 0

    path.write_bytes(encoded("chelsea"))
    changed, created = services.upload_register(path=path)
    assert created and changed.pk != first.pk


def test_register_refuses_paths_outside_the_media_tree(media: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(encoded("coffee"))
    with pytest.raises(files.UnsafePath):
        services.upload_register(path=outside)
    assert not Upload.objects.exists()


def test_odd_and_over_long_names_are_recorded_losslessly(media: Path, banned_astronaut) -> None:
    odd = os.path.join(os.fsencode(media), b"caf\xe9 \xff.jpg")
    with open(odd, "wb") as handle:
        handle.write(encoded("astronaut", size=(200, 200)))
    long_dir = media / "/".join(["x" * 250] * 5)
    long_dir.mkdir(parents=True)
    (long_dir / "photo.jpg").write_bytes(encoded("coffee"))

    upload, created = services.upload_register(path=odd)
    long, _ = services.upload_register(path=long_dir / "photo.jpg")

    assert created and upload.path == "caf\\xe9 \\xff.jpg"  # shown escaped
    assert upload.relative_path() == b"caf\xe9 \xff.jpg"  # kept exactly
    assert len(long.path) > 1024 and long.relative_path() == long.path.encode()
    upload = services.upload_process(upload_id=upload.pk)
    assert upload.state == State.QUARANTINED and not os.path.exists(odd)
    assert (files.quarantine_dir() / upload.quarantine_name).exists()
    assert services.upload_process(upload_id=long.pk).state == State.CLEAN


def test_files_hashguard_must_not_read_are_recorded_as_errors(media: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(encoded("coffee"))
    (media / "link.jpg").symlink_to(outside)
    os.mkfifo(media / "pipe.jpg")
    for name in ("link.jpg", "pipe.jpg"):
        upload, created = services.upload_register(path=media / name)
        assert created and upload.state == State.ERROR and upload.error_code == "unsafe_path"
        assert upload.error and upload.decided_at
        assert services.upload_register(path=media / name) == (upload, False)


def test_what_is_not_an_image_is_recorded_at_once_and_left_alone(media: Path) -> None:
    for name, data in (
        ("notes.jpg", b"just some text"),
        ("doc", b"%PDF-1.7\n1 0 obj <<>> endobj\n"),
        ("empty.png", b""),
    ):
        (media / name).write_bytes(data)
        upload, created = services.upload_register(path=media / name)
        assert created and upload.state == State.NOT_IMAGE and upload.decided_at, name
        assert upload.queued_at is None and (media / name).exists()
    assert "PDF" in Upload.objects.get(path="doc").error


def test_an_image_too_large_to_check_is_held(media: Path, settings) -> None:
    (media / "huge.jpg").write_bytes(encoded("rocket"))
    settings.HASHGUARD_MAX_BYTES = 1000
    upload, created = services.upload_register(path=media / "huge.jpg")
    assert created and upload.state == State.PENDING and upload.sha256 == ""
    upload = services.upload_process(upload_id=upload.pk)
    assert upload.state == State.HELD and upload.error_code == "file_too_large"
    assert not (media / "huge.jpg").exists()
    assert (files.quarantine_dir() / upload.quarantine_name).read_bytes() == encoded("rocket")


def test_a_file_is_read_whole_up_to_the_limit_with_memory_for_what_it_holds(
    tmp_path: Path,
) -> None:
    import tracemalloc

    (tmp_path / "a.jpg").write_bytes(b"x" * 5000)
    assert files.read_regular_file(tmp_path, b"a.jpg", max_bytes=100_000) == b"x" * 5000
    assert files.read_regular_file(tmp_path, b"a.jpg", max_bytes=1000) == b"x" * 1001
    tracemalloc.start()
    try:
        files.read_regular_file(tmp_path, b"a.jpg", max_bytes=100 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # not the 100 MB of the limit


def test_resized_copy_is_quarantined_with_its_distances(media: Path, banned_astronaut) -> None:
    upload = drop(media, "profile/me.png", encoded("astronaut", "PNG", size=(180, 180)))
    assert upload.state == State.QUARANTINED
    assert not (media / "profile" / "me.png").exists()
    moved = files.quarantine_dir() / upload.quarantine_name
    assert moved.read_bytes() == encoded("astronaut", "PNG", size=(180, 180))
    assert stat.S_IMODE(moved.stat().st_mode) == 0o600
    match = upload.matches.get()
    assert match.fingerprint == banned_astronaut[0]
    assert match.distances["pdq"] <= 31 and set(match.distances) == {"pdq", "phash", "dhash"}
    assert AuditEvent.objects.filter(action="upload_quarantined", upload=upload).exists()


def test_unrelated_image_is_clean_and_stays_put(media: Path, banned_astronaut) -> None:
    upload = drop(media, "coffee.jpg", encoded("coffee"))
    assert upload.state == State.CLEAN
    assert (media / "coffee.jpg").exists()
    assert upload.format == "JPEG" and upload.fingerprints[0]["hashes"]["pdq"]


def test_exact_copy_matches_by_sha256_even_without_fingerprints(media: Path) -> None:
    data = encoded("rocket")
    services.banned_add_image(data=data)
    BannedFingerprint.objects.update(phash="", dhash="", pdq="")  # as if hashes were unusable
    services.blocklist_bump()
    upload = drop(media, "rocket.jpg", data)
    assert upload.state == State.QUARANTINED
    assert upload.matches.get().rule == "sha256"


@pytest.mark.parametrize(
    ("data", "state", "code"),
    [
        (encode(photo("rocket"), "JPEG")[:300], State.HELD, "corrupt"),
        (encode(photo("rocket"), "ICO"), State.HELD, "uncheckable_format"),
        (
            b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic" + bytes(500),
            State.HELD,
            "uncheckable_format",
        ),
        # An SVG whose <svg> element comes after a long comment, as editors write them.
        (
            b"<?xml version='1.0'?><!-- " + b"made by an editor " * 500 + b"-->"
            b"<svg xmlns='http://www.w3.org/2000/svg'><image href='x.jpg'/></svg>",
            State.HELD,
            "uncheckable_format",
        ),
        (encode(Image.new("RGB", (4, 4)), "PNG"), State.ERROR, "too_small"),
    ],
)
def test_files_that_cannot_be_checked_are_held(
    media: Path, data: bytes, state: str, code: str
) -> None:
    upload = drop(media, "bad.jpg", data)
    assert upload.state == state
    assert upload.error_code == code, upload.error
    assert upload.error
    # Held files wait in quarantine for a moderator; what shows no picture stays.
    assert (media / "bad.jpg").exists() is (state != State.HELD)
    if state == State.HELD:
        assert AuditEvent.objects.filter(action="upload_held", upload=upload).exists()
        assert upload in selectors.review_queue()


def test_files_that_cannot_be_checked_are_left_when_so_configured(media: Path, settings) -> None:
    settings.HASHGUARD_UNCHECKABLE = "leave"
    upload = drop(media, "bad.jpg", encode(photo("rocket"), "JPEG")[:300])
    assert (upload.state, upload.error_code) == (State.ERROR, "corrupt")
    assert (media / "bad.jpg").exists()


def test_a_banned_jpeg_cut_short_is_still_caught(media: Path, banned_astronaut) -> None:
    data = encoded("astronaut", quality=85)
    cut = drop(media, "cut.jpg", data[:-2])  # no end marker: browsers show it whole
    half = drop(media, "half.jpg", data[: len(data) * 2 // 3])
    assert cut.state == State.QUARANTINED and "cut short" in cut.error
    assert half.state == State.QUARANTINED, half.error


def test_missing_and_changed_files_are_recorded_as_errors(media: Path) -> None:
    path = media / "gone.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    path.unlink()
    assert services.upload_process(upload_id=upload.pk).error_code == "missing"

    path = media / "changed.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    path.write_bytes(encoded("chelsea"))
    assert services.upload_process(upload_id=upload.pk).error_code == "changed"


def test_a_file_swapped_for_a_symlink_is_not_followed(media: Path, tmp_path: Path) -> None:
    path = media / "swap.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    path.unlink()
    target = tmp_path / "private.jpg"
    target.write_bytes(encoded("coffee"))
    path.symlink_to(target)
    assert services.upload_process(upload_id=upload.pk).error_code == "unsafe_path"


def test_processing_twice_does_nothing_the_second_time(media: Path, banned_astronaut) -> None:
    upload = drop(media, "a.jpg", encoded("astronaut"))
    again = services.upload_process(upload_id=upload.pk)
    assert again.state == State.QUARANTINED and again.attempts == 1
    assert Match.objects.filter(upload=upload).count() == 1


def test_an_interrupted_quarantine_is_finished_on_retry(media: Path, banned_astronaut) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("astronaut"))
    upload, _ = services.upload_register(path=path)
    # A worker moved the file and died before it could record the decision.
    quarantine_by_hand(upload)
    Upload.objects.filter(pk=upload.pk).update(
        state=State.PROCESSING,
        claimed_at=timezone.now() - timedelta(minutes=2),
        lease_expires_at=timezone.now() - timedelta(minutes=1),
    )
    services.uploads_requeue_stale(older_than=timedelta(minutes=10), waiting_in_queue=0)
    assert Upload.objects.get(pk=upload.pk).state == State.PENDING
    assert services.upload_process(upload_id=upload.pk).state == State.QUARANTINED


def test_a_move_cut_short_after_the_link_is_finished_on_retry(
    media: Path, banned_astronaut
) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("astronaut"))
    upload, _ = services.upload_register(path=path)
    # A worker linked the file into quarantine and died before removing it from media.
    destination = files.quarantine_dir() / f"{upload.pk}/a.jpg"
    destination.parent.mkdir()
    os.link(path, destination)
    assert services.upload_process(upload_id=upload.pk).state == State.QUARANTINED
    assert not path.exists() and destination.exists()


def test_a_file_moved_by_a_lost_attempt_goes_back_if_its_ban_is_gone(
    media: Path, banned_astronaut, moderator
) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("astronaut"))
    os.chmod(path, 0o644)
    upload, _ = services.upload_register(path=path)
    quarantine_by_hand(upload)
    services.banned_set_active(
        fingerprint_ids=[r.pk for r in banned_astronaut], active=False, actor=moderator
    )
    upload = services.upload_process(upload_id=upload.pk)
    assert upload.state == State.CLEAN
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not (files.quarantine_dir() / f"{upload.pk}/a.jpg").exists()


class Paused:
    """Holds the first worker inside its check (where it reads the blocklist) until let
    go, as a worker that stalls or is presumed dead would be."""

    def __init__(self, monkeypatch) -> None:
        self.inside = threading.Event()
        self.go = threading.Event()
        real = uploads.current_blocklist

        def current_blocklist():  # noqa: ANN202
            if threading.get_ident() == self.thread.ident:
                self.inside.set()
                self.go.wait(30)
            return real()

        monkeypatch.setattr(uploads, "current_blocklist", current_blocklist)
        self.thread = threading.Thread(target=lambda: None)

    def start(self, upload_id: int) -> None:
        def work() -> None:
            try:
                services.upload_process(upload_id=upload_id)
            finally:
                connections.close_all()

        self.thread = threading.Thread(target=work)
        self.thread.start()
        assert self.inside.wait(30), "the first worker never reached its check"

    def finish(self) -> None:
        self.go.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_a_worker_presumed_dead_cannot_overwrite_the_decision_of_its_successor(
    media: Path, banned_astronaut, monkeypatch
) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("astronaut"))
    upload, _ = services.upload_register(path=path)
    first = Paused(monkeypatch)
    first.start(upload.pk)
    # Its lease runs out; a redelivered task takes over and decides.
    Upload.objects.filter(pk=upload.pk).update(lease_expires_at=timezone.now())
    successor = services.upload_process(upload_id=upload.pk)
    assert successor.state == State.QUARANTINED
    # The first worker wakes up and finishes under its old claim: nothing changes.
    first.finish()
    assert Upload.objects.get(pk=upload.pk).state == State.QUARANTINED
    assert (files.quarantine_dir() / successor.quarantine_name).exists()
    assert Match.objects.filter(upload=upload).count() == 1
    assert AuditEvent.objects.filter(upload=upload, action="upload_quarantined").count() == 1


def test_an_exact_copy_is_caught_even_when_it_cannot_be_decoded(media: Path, settings) -> None:
    data = encoded("rocket")
    services.banned_add_image(data=data)
    settings.HASHGUARD_MAX_PIXELS = 100  # limits lowered after the ban
    upload = drop(media, "copy.jpg", data)
    assert upload.state == State.QUARANTINED
    assert upload.matches.get().rule == "sha256"
    other = drop(media, "other.jpg", encoded("coffee"))
    assert (other.state, other.error_code) == (State.HELD, "decompression_bomb")


def test_release_puts_only_this_file_back(media: Path, banned_astronaut, moderator) -> None:
    data = encoded("astronaut", size=(300, 300))
    (media / "me.jpg").write_bytes(data)
    os.chmod(media / "me.jpg", 0o644)
    upload, _ = services.upload_register(path=media / "me.jpg")
    upload = services.upload_process(upload_id=upload.pk)
    assert stat.S_IMODE(os.stat(files.quarantine_dir() / upload.quarantine_name).st_mode) == 0o600
    services.upload_release(upload_id=upload.pk, actor=moderator)
    assert (media / "me.jpg").read_bytes() == data
    assert stat.S_IMODE(os.stat(media / "me.jpg").st_mode) == 0o644
    upload.refresh_from_db()
    assert upload.state == State.RELEASED and upload.reviewed_by == moderator
    # The watcher sees the file come back: the same file, nothing new recorded.
    assert services.upload_register(path=media / "me.jpg") == (upload, False)
    # The same content uploaded again is a new upload, and caught again.
    assert drop(media, "again.jpg", data).state == State.QUARANTINED


def test_release_can_let_exact_copies_pass_the_ban(
    media: Path, banned_astronaut, moderator
) -> None:
    data = encoded("astronaut", size=(300, 300))
    upload = drop(media, "me.jpg", data)
    services.upload_release(upload_id=upload.pk, actor=moderator, allow_copies=True)
    event = AuditEvent.objects.get(action="upload_released", upload=upload)
    assert "exact copies" in event.detail
    # The same content uploaded again is not quarantined for that match.
    assert drop(media, "again.jpg", data).state == State.CLEAN
    # Other content matching the same banned image still is.
    assert drop(media, "other.jpg", encoded("astronaut", quality=50)).state == State.QUARANTINED


def test_the_same_file_copied_to_the_same_path_again_is_checked_again(
    media: Path, banned_astronaut
) -> None:
    data = encoded("astronaut", size=(300, 300))
    first = drop(media, "x.jpg", data)
    assert first.state == State.QUARANTINED and not (media / "x.jpg").exists()
    second = drop(media, "x.jpg", data)  # the same bytes, copied to the same path
    assert second.pk != first.pk and second.state == State.QUARANTINED
    assert Upload.objects.get(pk=first.pk).state == State.QUARANTINED  # history kept


def test_a_file_removed_before_its_check_and_put_back_is_checked(
    media: Path, banned_astronaut
) -> None:
    data = encoded("astronaut", size=(300, 300))
    (media / "x.jpg").write_bytes(data)
    upload, _ = services.upload_register(path=media / "x.jpg")
    (media / "x.jpg").unlink()
    assert services.upload_process(upload_id=upload.pk).error_code == "missing"
    (media / "x.jpg").write_bytes(data)
    again, created = services.upload_register(path=media / "x.jpg")
    assert created and services.upload_process(upload_id=again.pk).state == State.QUARANTINED
    assert Upload.objects.get(pk=upload.pk).state == State.SUPERSEDED


def test_registering_the_same_file_again(media: Path) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    pending, created = services.upload_register(path=path)
    assert created
    # While it waits for its decision: the same bytes are the same upload, even copied anew.
    assert services.upload_register(path=path) == (pending, False)
    path.unlink()
    path.write_bytes(encoded("coffee"))
    assert services.upload_register(path=path) == (pending, False)
    clean = services.upload_process(upload_id=pending.pk)
    assert clean.state == State.CLEAN
    # Decided clean: the same file is the same upload; a new copy of it is checked again.
    assert services.upload_register(path=path) == (clean, False)
    (media / "copy.tmp").write_bytes(encoded("coffee"))
    os.rename(media / "copy.tmp", path)
    copy, created = services.upload_register(path=path)
    assert created and Upload.objects.get(pk=clean.pk).state == State.SUPERSEDED
    # New bytes: a new upload, which supersedes the record of the old ones.
    path.write_bytes(encoded("chelsea"))
    changed, created = services.upload_register(path=path)
    assert created and Upload.objects.get(pk=copy.pk).superseded_by == changed
    # An error is closed: the file is checked again when it is seen again.
    Upload.objects.filter(pk=changed.pk).update(state=State.ERROR, error_code="internal")
    assert services.upload_register(path=path)[1] is True


def test_a_partial_copy_is_superseded_by_the_finished_file(media: Path) -> None:
    data = encoded("coffee")
    path = media / "slow.jpg"
    path.write_bytes(data[:300])  # the writer paused longer than the stability window
    partial, _ = services.upload_register(path=path)
    assert services.upload_process(upload_id=partial.pk).state == State.HELD
    # A held partial copy was moved away: the writer's next bytes go to a new file.
    path.write_bytes(data)
    final, created = services.upload_register(path=path)
    assert created and services.upload_process(upload_id=final.pk).state == State.CLEAN

    with open(media / "b.jpg", "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        first, _ = services.upload_register(path=media / "b.jpg")
        handle.write(data[len(data) // 2 :])
    second, created = services.upload_register(path=media / "b.jpg")
    assert created
    first.refresh_from_db()
    assert first.state == State.SUPERSEDED and first.superseded_by == second
    assert services.upload_process(upload_id=first.pk).state == State.SUPERSEDED


def test_a_file_renamed_into_place_supersedes_its_temporary_name(media: Path) -> None:
    (media / "upload.tmp").write_bytes(encoded("coffee"))
    temporary, _ = services.upload_register(path=media / "upload.tmp")
    os.rename(media / "upload.tmp", media / "photo.jpg")
    final, created = services.upload_register(path=media / "photo.jpg")
    assert created and Upload.objects.get(pk=temporary.pk).state == State.SUPERSEDED
    # A hard link is not a rename: both names stay live.
    os.link(media / "photo.jpg", media / "link.jpg")
    services.upload_register(path=media / "link.jpg")
    assert Upload.objects.get(pk=final.pk).state == State.PENDING


def test_a_hard_linked_upload_is_copied_into_quarantine(
    media: Path, banned_astronaut, tmp_path: Path
) -> None:
    (media / "a.jpg").write_bytes(encoded("astronaut", size=(300, 300)))
    os.chmod(media / "a.jpg", 0o644)
    os.link(media / "a.jpg", tmp_path / "elsewhere.jpg")
    upload = drop(media, "a.jpg", (media / "a.jpg").read_bytes())
    assert upload.state == State.QUARANTINED and not (media / "a.jpg").exists()
    quarantined = files.quarantine_dir() / upload.quarantine_name
    assert os.stat(quarantined).st_ino != os.stat(tmp_path / "elsewhere.jpg").st_ino
    # The other name keeps its mode: the quarantine copy is private, it is not re-moded.
    assert stat.S_IMODE(os.stat(tmp_path / "elsewhere.jpg").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(quarantined).st_mode) == 0o600


def test_a_directory_swapped_for_a_symlink_leads_nowhere(
    media: Path, banned_astronaut, tmp_path: Path, moderator
) -> None:
    (media / "users").mkdir()
    (media / "users" / "a.jpg").write_bytes(encoded("astronaut", size=(300, 300)))
    upload, _ = services.upload_register(path=media / "users" / "a.jpg")
    # Between recording and checking, the directory becomes a link to one outside media.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.jpg").write_bytes(encoded("astronaut", size=(300, 300)))
    os.rename(media / "users", tmp_path / "old-users")
    (media / "users").symlink_to(outside)
    upload = services.upload_process(upload_id=upload.pk)
    assert upload.error_code == "unsafe_path" and "symlink" in upload.error
    assert (outside / "a.jpg").exists()  # nothing outside the media tree was moved

    # Release cannot write through a swapped directory either.
    os.unlink(media / "users")
    os.rename(tmp_path / "old-users", media / "users")
    quarantined = drop(media, "users/b.jpg", encoded("astronaut", size=(280, 280)))
    os.rename(media / "users", tmp_path / "old-users-2")
    (media / "users").symlink_to(outside)
    with pytest.raises(services.ActionRefused, match="symlink"):
        services.upload_release(upload_id=quarantined.pk, actor=moderator)
    assert not (outside / "b.jpg").exists()
    assert Upload.objects.get(pk=quarantined.pk).state == State.QUARANTINED


def test_release_refuses_to_overwrite(media: Path, banned_astronaut, moderator) -> None:
    upload = drop(media, "me.jpg", encoded("astronaut"))
    (media / "me.jpg").write_bytes(b"someone else's file")
    with pytest.raises(services.ActionRefused, match="already exists|now exists"):
        services.upload_release(upload_id=upload.pk, actor=moderator)
    assert Upload.objects.get(pk=upload.pk).state == State.QUARANTINED
    assert (files.quarantine_dir() / upload.quarantine_name).exists()


def test_confirm_keeps_it_quarantined(media: Path, banned_astronaut, moderator) -> None:
    upload = drop(media, "me.jpg", encoded("astronaut"))
    confirmed = services.upload_confirm(upload_id=upload.pk, actor=moderator)
    assert confirmed.state == State.CONFIRMED
    assert (files.quarantine_dir() / upload.quarantine_name).exists()
    with pytest.raises(services.ActionRefused):
        services.upload_confirm(upload_id=upload.pk, actor=moderator)


def test_flag_bans_a_clean_upload_and_catches_its_copies(media: Path, moderator) -> None:
    upload = drop(media, "cat.jpg", encoded("chelsea"))
    assert upload.state == State.CLEAN
    flagged = services.upload_flag(
        upload_id=upload.pk, actor=moderator, category="scam", reason="stolen photo"
    )
    assert flagged.state == State.CONFIRMED
    assert not (media / "cat.jpg").exists()
    banned = BannedFingerprint.objects.get()
    assert banned.source == "upload" and banned.source_upload == upload
    assert banned.added_by == moderator and banned.reason == "stolen photo"
    assert (files.reference_dir() / banned.reference_name).exists()
    copy = drop(media, "cat2.webp", encoded("chelsea", "WEBP", size=(200, 150)))
    assert copy.state == State.QUARANTINED


def test_pasted_pdq_hash_bans_matching_images(media: Path) -> None:
    fingerprint = fingerprint_frames(load_image(encoded("coffee")))[0]
    services.banned_add_hashes(
        hashes={"pdq": fingerprint.hashes["pdq"].upper()}, pdq_quality=90, category="scam"
    )
    assert drop(media, "coffee.png", encoded("coffee", "PNG")).state == State.QUARANTINED
    assert drop(media, "rocket.jpg", encoded("rocket")).state == State.CLEAN


def test_malformed_pasted_hash_is_refused() -> None:
    with pytest.raises(ValueError):
        services.banned_add_hashes(hashes={"pdq": "xyz"})
    with pytest.raises(ValueError):
        services.banned_add_hashes(hashes={"pdq": "  "})
    assert not BannedFingerprint.objects.exists()


def test_blocklist_changes_reach_the_worker_cache(media: Path, moderator) -> None:
    assert len(current_blocklist().detector) == 0
    rows = services.banned_add_image(data=encoded("astronaut"))
    assert len(current_blocklist().detector) == 1
    services.banned_set_active(fingerprint_ids=[r.pk for r in rows], active=False, actor=moderator)
    assert len(current_blocklist().detector) == 0
    assert drop(media, "a.jpg", encoded("astronaut")).state == State.CLEAN
    services.banned_set_active(fingerprint_ids=[r.pk for r in rows], active=True, actor=moderator)
    assert drop(media, "b.jpg", encoded("astronaut", "PNG")).state == State.QUARANTINED


def test_banning_the_same_image_twice_returns_the_first_ban(stores: Path) -> None:
    first = services.banned_add_image(data=encoded("astronaut"))
    second = services.banned_add_image(data=encoded("astronaut"))
    assert [r.pk for r in first] == [r.pk for r in second]


def test_delete_removes_unused_reference_images(
    stores: Path, moderator, django_capture_on_commit_callbacks
) -> None:
    rows = services.banned_add_image(data=encoded("astronaut"))
    reference = files.reference_dir() / rows[0].reference_name
    assert stat.S_IMODE(reference.stat().st_mode) == 0o600
    with django_capture_on_commit_callbacks(execute=True):
        services.banned_delete(fingerprint_ids=[r.pk for r in rows], actor=moderator)
    assert not reference.exists()
    assert not BannedFingerprint.objects.exists()
    assert AuditEvent.objects.filter(action="ban_deleted").count() == len(rows)


def requeue(waiting_in_queue: int | None = 0) -> int:
    return services.uploads_requeue_stale(
        older_than=timedelta(seconds=60), waiting_in_queue=waiting_in_queue
    )


def test_requeue_sends_again_an_upload_whose_lease_ran_out(media: Path) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    now = timezone.now()
    Upload.objects.filter(pk=upload.pk).update(
        state=State.PROCESSING, claimed_at=now, lease_expires_at=now + timedelta(seconds=30)
    )
    assert requeue() == 0  # its worker holds the lease
    Upload.objects.filter(pk=upload.pk).update(lease_expires_at=now - timedelta(seconds=1))
    assert requeue() == 1
    upload.refresh_from_db()
    assert upload.state == State.PENDING and upload.queued_at is not None


def test_a_task_takes_over_an_upload_whose_lease_ran_out(media: Path) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    now = timezone.now()
    held = {"state": State.PROCESSING, "claimed_at": now}
    Upload.objects.filter(pk=upload.pk).update(**held, lease_expires_at=now + timedelta(minutes=1))
    # A second delivery while the first worker holds the lease does nothing.
    assert services.upload_process(upload_id=upload.pk).state == State.PROCESSING
    Upload.objects.filter(pk=upload.pk).update(lease_expires_at=now - timedelta(seconds=1))
    # A redelivered task finds the lease ran out (its worker died) and takes over.
    assert services.upload_process(upload_id=upload.pk).state == State.CLEAN


@pytest.mark.django_db(transaction=True)
def test_the_lease_is_renewed_while_the_worker_works(media: Path, monkeypatch) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    monkeypatch.setattr(uploads, "LEASE", timedelta(seconds=0.3))
    worker = Paused(monkeypatch)
    worker.start(upload.pk)
    first = Upload.objects.get(pk=upload.pk).lease_expires_at
    wait_for(
        lambda: Upload.objects.get(pk=upload.pk).lease_expires_at > first,
        timeout=10,
        what="the lease renewed",
    )
    # A second delivery meanwhile finds the lease held and does nothing.
    assert services.upload_process(upload_id=upload.pk).state == State.PROCESSING
    worker.finish()
    assert Upload.objects.get(pk=upload.pk).state == State.CLEAN


def test_a_file_that_keeps_killing_workers_is_held(media: Path) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    Upload.objects.filter(pk=upload.pk).update(
        state=State.PROCESSING,
        claimed_at=timezone.now() - timedelta(hours=1),
        lease_expires_at=timezone.now() - timedelta(minutes=59),
        attempts=services.MAX_ATTEMPTS,
    )
    assert requeue() == 1
    upload = services.upload_process(upload_id=upload.pk)
    assert upload.state == State.HELD and upload.error_code == "worker_died"
    assert not path.exists()


def test_requeue_sends_what_the_queue_no_longer_holds(media: Path) -> None:
    uploads = []
    for quality in (50, 60, 70):
        (media / f"{quality}.jpg").write_bytes(encoded("coffee", quality=quality))
        uploads.append(services.upload_register(path=media / f"{quality}.jpg")[0])
    long_ago = timezone.now() - timedelta(minutes=5)
    for minutes, upload in enumerate(uploads):
        Upload.objects.filter(pk=upload.pk).update(queued_at=long_ago + timedelta(minutes=minutes))
    # Messages are taken first in, first out: with all three still in the queue, none is
    # lost; with one, the two oldest were delivered and are not decided: sent again.
    assert requeue(waiting_in_queue=3) == 0
    assert requeue(waiting_in_queue=1) == 2
    assert Upload.objects.get(pk=uploads[2].pk).queued_at == long_ago + timedelta(minutes=2)
    # Sent again just now, and in the queue: not again until older_than has passed.
    assert requeue(waiting_in_queue=3) == 0
    # A broker that cannot tell: everything sent long ago is sent again.
    assert requeue(waiting_in_queue=None) == 1


def test_retry_checks_a_held_upload_again(media: Path, moderator) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    services.upload_fail(upload_id=upload.pk, code="internal", message="database was down")
    assert Upload.objects.get(pk=upload.pk).state == State.HELD and not path.exists()
    upload = services.upload_retry(upload_id=upload.pk, actor=moderator)
    assert upload.state == State.PENDING and not upload.error
    assert services.upload_process(upload_id=upload.pk).state == State.CLEAN
    assert path.exists()  # clean after all: put back
    with pytest.raises(services.ActionRefused):
        services.upload_retry(upload_id=upload.pk, actor=moderator)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
def test_move_across_filesystems_copies_then_removes(tmp_path: Path) -> None:
    source = tmp_path / "a.jpg"
    source.write_bytes(b"image bytes")
    target_dir = Path("/dev/shm") / f"hashguard-test-{os.getpid()}"
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem here")
    target_dir.mkdir()
    try:
        files.move_file(tmp_path, b"a.jpg", target_dir, b"sub/a.jpg", private=True)
        moved = target_dir / "sub" / "a.jpg"
        assert moved.read_bytes() == b"image bytes" and not source.exists()
        assert stat.S_IMODE(moved.stat().st_mode) == 0o600
        assert list(moved.parent.iterdir()) == [moved]  # no partial file left behind
    finally:
        shutil.rmtree(target_dir)


def _gradient() -> bytes:
    image = ImageOps.colorize(Image.linear_gradient("L").resize((400, 300)), "navy", "white")
    return encode(image, "PNG")


def test_edited_copies_are_quarantined_with_the_stage_and_variant_that_found_them(
    media: Path, banned_astronaut
) -> None:
    astronaut = photo("astronaut")
    cropped = astronaut.crop((0, 0, astronaut.width, round(astronaut.height * 0.8)))
    framed = ImageOps.expand(astronaut, border=40, fill="white")
    cases = {
        "mirrored.jpg": (astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "hash", "mirrored"),
        "framed.jpg": (framed, "hash", "border"),
        "cropped.jpg": (cropped, "local features", "matching points"),
    }
    for name, (image, stage, variant) in cases.items():
        upload = drop(media, name, encode(image, "JPEG"))
        assert upload.state == State.QUARANTINED, name
        match = Match.objects.get(upload=upload)
        assert match.stage == stage and variant in match.variant, (name, match.variant)
        event = AuditEvent.objects.filter(upload=upload).last()
        assert stage in event.detail and variant in event.detail


def test_a_plain_image_is_banned_for_exact_copies_only(media: Path) -> None:
    data = _gradient()
    rows = services.banned_add_image(data=data)
    assert selectors.banned_low_detail(rows=rows) == rows
    assert "Only exact copies of this file will be caught" in selectors.low_detail_message(rows[0])
    # Its recompressed copy, and every other smooth image, pass; the same file is caught.
    assert drop(media, "copy.jpg", encode(Image.open(io.BytesIO(data)), "JPEG")).state == (
        State.CLEAN
    )
    upload = drop(media, "same.png", data)
    assert upload.state == State.QUARANTINED
    assert Match.objects.get(upload=upload).stage == "sha256"


def test_pasted_hashes_of_a_plain_picture_are_refused() -> None:
    with pytest.raises(ValueError, match="plain picture"):
        services.banned_add_hashes(hashes={"dhash": "0000000000000000"})
    assert not BannedFingerprint.objects.exists()


def test_rehash_adds_the_second_stage_to_bans_made_without_it(media: Path) -> None:
    rows = services.banned_add_image(data=encoded("astronaut"))
    BannedFingerprint.objects.update(features=None, colours=None, words=None)
    assert services.banned_rehash() == (1, 0)
    row = BannedFingerprint.objects.get(pk=rows[0].pk)
    assert row.features and row.colours and row.words
    cropped = photo("astronaut").crop((80, 0, 512, 512))
    assert drop(media, "crop.jpg", encode(cropped, "JPEG")).state == State.QUARANTINED


def test_rehash_adds_mirrored_words_to_bans_stored_without_them(
    media: Path,
    settings,  # noqa: ANN001
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Neither colours nor near hashes nominate: only the words can.
    settings.HASHGUARD_DETECT = {"colour_candidates": 0, "near_pdq": 0, "near_phash": 0}
    rows = services.banned_add_image(data=encoded("astronaut"))
    assert words_from_bytes(rows[0].mirrored_words) is not None
    assert build_blocklist().detector.mirrors_all
    BannedFingerprint.objects.update(mirrored_words=None)
    services.blocklist_bump()
    # Until then the upload mirrored finds a mirrored crop, as before they were stored,
    # and the build says so.
    assert not build_blocklist().detector.mirrors_all
    assert "`manage.py rehash` adds them" in caplog.text
    mirrored_crop = EDITS["mirror_crop"].apply(photo("astronaut"), random.Random(2), [])
    upload = drop(media, "before.jpg", mirrored_crop)
    assert upload.state == State.QUARANTINED
    assert Match.objects.get(upload=upload).stage == "local features"
    assert services.banned_rehash() == (1, 0)
    assert words_from_bytes(BannedFingerprint.objects.get().mirrored_words) is not None
    assert build_blocklist().detector.mirrors_all
    upload = drop(media, "after.jpg", mirrored_crop)
    assert upload.state == State.QUARANTINED
    assert Match.objects.get(upload=upload).stage == "local features"
    assert services.banned_rehash() == (0, 0)


def test_rehash_adds_the_grey_copy_to_features_stored_without_it() -> None:
    rows = services.banned_add_image(data=encoded("astronaut"))
    stored = LocalFeatures.from_bytes(bytes(rows[0].features))
    assert stored.pixels is not None and max(stored.pixels.shape) <= 160
    older = dataclasses.replace(stored, pixels=None).to_bytes()
    BannedFingerprint.objects.update(features=older)
    assert services.banned_rehash() == (1, 0)
    again = LocalFeatures.from_bytes(bytes(BannedFingerprint.objects.get().features))
    assert again.pixels is not None
    assert services.banned_rehash() == (0, 0)


def test_rehash_adds_the_coarser_scale_to_features_found_at_one(media: Path, settings) -> None:  # noqa: ANN001
    # Neither colours nor near hashes nominate: only the words can.
    settings.HASHGUARD_DETECT = {"colour_candidates": 0, "near_pdq": 0, "near_phash": 0}
    rows = services.banned_add_image(data=encoded("coffee"))
    stored = LocalFeatures.from_bytes(bytes(rows[0].features))
    large = stored.scales[0]
    older = dataclasses.replace(
        stored, points=stored.points[:large], descriptors=stored.descriptors[:large], scales=()
    )
    BannedFingerprint.objects.update(features=older.to_bytes(), words=None)
    assert services.banned_rehash() == (1, 0)
    row = BannedFingerprint.objects.get()
    assert LocalFeatures.from_bytes(bytes(row.features)).scales == stored.scales
    assert words_from_bytes(row.words) is not None
    # The words nominate a copy pasted tilted into another picture: no view cuts it out,
    # so no hash finds it.
    canvas = photo("chelsea").copy()
    small = photo("coffee").resize((canvas.width // 2, canvas.height // 2)).convert("RGBA")
    tilted = small.rotate(6, Image.Resampling.BICUBIC, expand=True)
    canvas.paste(tilted, (0, canvas.height - tilted.height), tilted)
    upload = drop(media, "pasted.jpg", encode(canvas, "JPEG", quality=90))
    assert upload.state == State.QUARANTINED
    assert Match.objects.get(upload=upload).stage == "local features"


@pytest.mark.parametrize("size", [(60000, 8), (8, 60000), (20000, 9), (3000, 40)])
def test_odd_shapes_are_decided(media: Path, banned_astronaut, size: tuple[int, int]) -> None:
    strip = Image.effect_noise(size, 60).convert("RGB")
    upload = drop(media, "strip.png", encode(strip, "PNG"))
    assert upload.state == State.CLEAN, upload.error


def test_only_faults_that_may_pass_are_retried() -> None:
    from django.db import OperationalError

    from moderation.tasks import is_transient

    assert is_transient(OperationalError("the database restarted"))
    assert is_transient(OSError(errno.EIO, "input/output error"))
    assert is_transient(OSError(errno.ESTALE, "stale NFS handle"))
    assert not is_transient(PermissionError(errno.EACCES, "permission denied"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_transient(ValueError("a bug"))


def test_banning_before_any_store_exists_makes_the_reference_store(settings, tmp_path) -> None:
    settings.HASHGUARD_REFERENCE_DIR = tmp_path / "fresh" / "references"
    [row] = services.banned_add_image(data=encoded("coffee"))
    stored = tmp_path / "fresh" / "references" / row.reference_name
    assert stored.read_bytes() == encoded("coffee")
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700


def test_the_transitions_table_is_a_sound_state_graph() -> None:
    reached = {State.PENDING}
    changed = True
    while changed:
        changed = False
        for transition in Transition:
            if reached & set(transition.sources) and not set(transition.targets) <= reached:
                reached |= set(transition.targets)
                changed = True
    assert reached == set(State)  # every state can be reached from a new upload
    # Superseded is the end: nothing leaves it.
    assert not any(State.SUPERSEDED in t.sources for t in Transition)
    # A decision is made only under a claim.
    assert Transition.DECIDE.sources == [State.PROCESSING]


def test_every_state_change_the_services_made_followed_the_table(
    media: Path, banned_astronaut, moderator
) -> None:
    """Run uploads through every action and check each change of state against it."""
    seen: list[tuple[str, str]] = []
    last: dict[int, str] = {}

    def note() -> None:
        for pk, state in Upload.objects.values_list("pk", "state"):
            if last.get(pk, State.PENDING) != state:
                seen.append((last.get(pk, State.PENDING), state))
            last[pk] = state

    quarantined = drop(media, "a.jpg", encoded("astronaut", size=(300, 300)))
    note()
    services.upload_release(upload_id=quarantined.pk, actor=moderator)
    note()
    services.upload_flag(upload_id=quarantined.pk, actor=moderator)
    note()
    held = drop(media, "b.jpg", encoded("rocket")[:300])
    note()
    services.upload_retry(upload_id=held.pk, actor=moderator)
    note()
    services.upload_process(upload_id=held.pk)
    note()
    services.upload_confirm(upload_id=held.pk, actor=moderator)
    note()
    allowed = {(a, b) for t in Transition for a in t.sources for b in t.targets}
    # The processing step inside upload_process is not seen from here; allow its hops.
    allowed |= {(State.PENDING, b) for b in Transition.DECIDE.targets}
    assert seen and set(seen) <= allowed, set(seen) - allowed
