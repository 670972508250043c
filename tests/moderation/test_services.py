import dataclasses
import io
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from PIL import Image, ImageOps

from hashes.algorithms import fingerprint_frames
from hashes.loading import load_image
from hashes.local import LocalFeatures
from moderation import files, services
from moderation.blocklist import current_blocklist
from moderation.models import AuditEvent, BannedFingerprint, Match, Upload
from tests.images import encode, photo

State = Upload.State
pytestmark = pytest.mark.django_db


def encoded(name: str, fmt: str = "JPEG", size: tuple[int, int] | None = None, **kw) -> bytes:
    image = photo(name)
    return encode(image.resize(size) if size else image, fmt, **kw)


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
def moderator():
    return get_user_model().objects.create_superuser("mod", password="x")


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


def test_register_refuses_paths_outside_the_media_tree_or_unstorable(
    media: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(encoded("coffee"))
    with pytest.raises(files.UnsafePath):
        services.upload_register(path=outside)
    odd = media / os.fsdecode(b"caf\xe9.jpg")
    odd.write_bytes(encoded("coffee"))
    with pytest.raises(files.UnsafePath, match="UTF-8"):
        services.upload_register(path=odd)
    assert not Upload.objects.exists()


def test_files_hashguard_must_not_read_are_recorded_as_errors(
    media: Path, tmp_path: Path, settings
) -> None:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(encoded("coffee"))
    (media / "link.jpg").symlink_to(outside)
    os.mkfifo(media / "pipe.jpg")
    (media / "huge.jpg").write_bytes(encoded("rocket"))
    settings.HASHGUARD_MAX_BYTES = 1000
    for name, code in (
        ("link.jpg", "unsafe_path"),
        ("pipe.jpg", "unsafe_path"),
        ("huge.jpg", "file_too_large"),
    ):
        upload, created = services.upload_register(path=media / name)
        assert created and upload.state == State.ERROR and upload.error_code == code, name
        assert upload.error and upload.decided_at
        assert services.upload_register(path=media / name) == (upload, False)


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
    ("data", "code"),
    [
        (b"", "too_small"),
        (b"<html><script>alert(1)</script></html>", "unsupported_format"),
        (encode(photo("rocket"), "JPEG")[:2000], "corrupt"),
        (encode(photo("rocket"), "ICO"), "unsupported_format"),
    ],
)
def test_bad_files_are_recorded_as_errors(media: Path, data: bytes, code: str) -> None:
    upload = drop(media, "bad.jpg", data)
    assert upload.state == State.ERROR
    assert upload.error_code == code, upload.error
    assert upload.error


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
    files.move_file(path, files.quarantine_dir() / f"{upload.pk}/a.jpg", private=True)
    Upload.objects.filter(pk=upload.pk).update(
        state=State.PROCESSING, claimed_at=timezone.now() - timedelta(hours=2)
    )
    services.uploads_requeue_stale(older_than=timedelta(minutes=10))
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
    files.move_file(path, files.quarantine_dir() / f"{upload.pk}/a.jpg", private=True)
    services.banned_set_active(
        fingerprint_ids=[r.pk for r in banned_astronaut], active=False, actor=moderator
    )
    upload = services.upload_process(upload_id=upload.pk)
    assert upload.state == State.CLEAN
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not (files.quarantine_dir() / f"{upload.pk}/a.jpg").exists()


def test_a_worker_presumed_dead_cannot_overwrite_the_decision_of_its_successor(
    media: Path, banned_astronaut
) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("astronaut"))
    upload, _ = services.upload_register(path=path)
    stuck_since = timezone.now() - timedelta(hours=1)
    Upload.objects.filter(pk=upload.pk).update(state=State.PROCESSING, claimed_at=stuck_since)
    services.uploads_requeue_stale(older_than=timedelta(minutes=10))
    successor = services.upload_process(upload_id=upload.pk)
    assert successor.state == State.QUARANTINED
    # The first worker wakes up and finishes under its old claim: nothing changes.
    old_claim = Upload.objects.filter(pk=upload.pk, state=State.PROCESSING, claimed_at=stuck_since)
    services._process_claimed(Upload.objects.get(pk=upload.pk), old_claim)
    assert Upload.objects.get(pk=upload.pk).state == State.QUARANTINED
    assert (files.quarantine_dir() / successor.quarantine_name).exists()
    assert Match.objects.filter(upload=upload).count() == 1


def test_an_exact_copy_is_caught_even_when_it_cannot_be_decoded(media: Path, settings) -> None:
    data = encoded("rocket")
    services.banned_add_image(data=data)
    settings.HASHGUARD_MAX_PIXELS = 100  # limits lowered after the ban
    upload = drop(media, "copy.jpg", data)
    assert upload.state == State.QUARANTINED
    assert upload.matches.get().rule == "sha256"
    assert drop(media, "other.jpg", encoded("coffee")).error_code == "decompression_bomb"


def test_release_puts_the_file_back_and_the_same_match_lets_it_through(
    media: Path, banned_astronaut, moderator
) -> None:
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
    # The watcher sees the file come back: same path and content, nothing new recorded.
    assert services.upload_register(path=media / "me.jpg") == (upload, False)
    # The same content uploaded again elsewhere is not quarantined for that match.
    assert drop(media, "again.jpg", data).state == State.CLEAN
    # Other content matching the same banned image still is.
    assert drop(media, "other.jpg", encoded("astronaut", quality=50)).state == State.QUARANTINED


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


def test_requeue_finds_stalled_uploads(media: Path) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    long_ago = timezone.now() - timedelta(hours=1)
    Upload.objects.filter(pk=upload.pk).update(state=State.PROCESSING, claimed_at=long_ago)
    assert services.uploads_requeue_stale(older_than=timedelta(minutes=10)) == 1
    upload.refresh_from_db()
    assert upload.state == State.PENDING and upload.queued_at is not None


def test_a_file_that_keeps_killing_workers_is_given_up(media: Path) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    Upload.objects.filter(pk=upload.pk).update(
        state=State.PROCESSING,
        claimed_at=timezone.now() - timedelta(hours=1),
        attempts=services.MAX_ATTEMPTS,
    )
    assert services.uploads_requeue_stale(older_than=timedelta(minutes=10)) == 0
    upload.refresh_from_db()
    assert upload.state == State.ERROR and upload.error_code == "worker_died"


def test_requeue_leaves_a_backlog_alone_while_workers_make_progress(media: Path) -> None:
    uploads = []
    for name in ("a", "b"):
        (media / f"{name}.jpg").write_bytes(encoded("coffee", quality=50 if name == "a" else 90))
        uploads.append(services.upload_register(path=media / f"{name}.jpg")[0])
    long_ago = timezone.now() - timedelta(hours=1)
    Upload.objects.filter(pk=uploads[0].pk).update(queued_at=long_ago)
    Upload.objects.filter(pk=uploads[1].pk).update(
        state=State.CLEAN, queued_at=long_ago, decided_at=timezone.now()
    )
    assert services.uploads_requeue_stale(older_than=timedelta(minutes=10)) == 0
    Upload.objects.filter(pk=uploads[1].pk).update(decided_at=long_ago)
    assert services.uploads_requeue_stale(older_than=timedelta(minutes=10)) == 1


def test_retry_checks_an_upload_in_error_again(media: Path, moderator) -> None:
    path = media / "a.jpg"
    path.write_bytes(encoded("coffee"))
    upload, _ = services.upload_register(path=path)
    services.upload_fail(upload_id=upload.pk, code="internal", message="database was down")
    upload = services.upload_retry(upload_id=upload.pk, actor=moderator)
    assert upload.state == State.PENDING and not upload.error
    assert services.upload_process(upload_id=upload.pk).state == State.CLEAN
    with pytest.raises(services.ActionRefused):
        services.upload_retry(upload_id=upload.pk, actor=moderator)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
def test_move_across_filesystems_copies_then_removes(tmp_path: Path) -> None:
    source = tmp_path / "a.jpg"
    source.write_bytes(b"image bytes")
    target_dir = Path("/dev/shm") / f"hashguard-test-{os.getpid()}"
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem here")
    try:
        files.move_file(source, target_dir / "a.jpg", private=True)
        moved = target_dir / "a.jpg"
        assert moved.read_bytes() == b"image bytes" and not source.exists()
        assert stat.S_IMODE(moved.stat().st_mode) == 0o600
        assert list(target_dir.iterdir()) == [moved]  # no partial file left behind
    finally:
        for leftover in target_dir.glob("*"):
            leftover.unlink()
        target_dir.rmdir()


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
    assert services.banned_low_detail(rows=rows) == rows
    assert "Only exact copies of this file will be caught" in services.low_detail_message(rows[0])
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
    BannedFingerprint.objects.update(features=None, colours=None)
    assert services.banned_rehash() == (1, 0)
    row = BannedFingerprint.objects.get(pk=rows[0].pk)
    assert row.features and row.colours
    cropped = photo("astronaut").crop((80, 0, 512, 512))
    assert drop(media, "crop.jpg", encode(cropped, "JPEG")).state == State.QUARANTINED


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
