"""Looking back: a new ban checks the uploads recorded clean before it."""

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from moderation import services
from moderation.models import AuditEvent, Bank, Match, RetroCheck, Upload
from tests.images import encode
from tests.moderation.support import REVIEW_URL, add_upload, decode_jpeg, photo, re_upload

State = Upload.State
pytestmark = pytest.mark.django_db


def clean(stores: Path, name: str, picture: str) -> Upload:
    upload = add_upload(stores, name, re_upload(picture))
    assert upload.state == State.CLEAN
    return upload


def run(job: RetroCheck | None) -> RetroCheck:
    assert job is not None
    done = services.retro_check_run(job_id=job.pk)
    assert done is not None and done.state == RetroCheck.State.DONE, done and done.summary
    return done


def test_a_new_ban_finds_an_upload_recorded_clean_before_it(
    stores, moderator_client, django_capture_on_commit_callbacks
) -> None:
    earlier = clean(stores, "u/coffee.jpg", "coffee")
    other = clean(stores, "u/rocket.jpg", "rocket")
    with django_capture_on_commit_callbacks() as sent:
        services.banned_add_image(data=photo("coffee"), category="scam")
    assert len(sent) == 1  # the check is queued once the ban is committed
    job = RetroCheck.objects.get()

    done = run(job)

    assert (done.total, done.done, done.found) == (2, 2, 1)
    earlier.refresh_from_db()
    assert earlier.state == State.QUARANTINED
    assert not (stores / "media" / "u/coffee.jpg").exists()
    assert (stores / "quarantine" / earlier.quarantine_name).exists()
    assert Match.objects.get(upload=earlier).found_later
    assert Upload.objects.get(pk=other.pk).state == State.CLEAN
    event = AuditEvent.objects.get(action="upload_quarantined", upload=earlier)
    assert event.detail.startswith("found by a later ban")
    assert "1 found by the new bans" in AuditEvent.objects.get(action="retro_checked").detail
    page = moderator_client.get(REVIEW_URL).content.decode()
    assert "Found by a later ban." in page
    jobs = moderator_client.get("/admin/moderation/retrocheck/").content.decode()
    assert "2 of 2 uploads" in jobs


def test_an_imported_list_looks_back_too(stores) -> None:
    earlier = clean(stores, "u/coffee.jpg", "coffee")
    data = (stores / "media" / "u/coffee.jpg").read_bytes()
    services.bank_import(lines=[f"md5 {hashlib.md5(data).hexdigest()}\n"], bank="partner")
    job = RetroCheck.objects.get()
    assert job.bans[0]["bank"] == Bank.objects.get(name="partner").pk
    assert run(job).found == 1
    assert Upload.objects.get(pk=earlier.pk).state == State.QUARANTINED


def test_only_the_window_and_unchanged_files_are_checked(stores, settings) -> None:
    settings.HASHGUARD_RETRO_DAYS = 30
    old = clean(stores, "u/old.jpg", "coffee")
    Upload.objects.filter(pk=old.pk).update(decided_at=timezone.now() - timedelta(days=31))
    changed = clean(stores, "u/changed.jpg", "coffee")
    (stores / "media" / "u/changed.jpg").write_bytes(encode(decode_jpeg(photo("coffee")), "PNG"))
    services.banned_add_image(data=photo("coffee"))
    done = run(RetroCheck.objects.get())
    assert (done.total, done.found) == (1, 0)
    assert Upload.objects.get(pk=old.pk).state == State.CLEAN
    assert Upload.objects.get(pk=changed.pk).state == State.CLEAN  # the watcher's to record


def test_bans_added_while_a_check_waits_join_it(stores) -> None:
    clean(stores, "u/coffee.jpg", "coffee")
    clean(stores, "u/rocket.jpg", "rocket")
    services.banned_add_image(data=photo("coffee"))
    services.banned_add_image(data=photo("rocket"))
    job = RetroCheck.objects.get()
    assert len(job.bans) == 2
    assert run(job).found == 2


def test_looking_back_can_be_turned_off_and_skips_known_good_lists(stores, settings) -> None:
    clean(stores, "u/coffee.jpg", "coffee")
    services.bank_save(bank=Bank(name="site-art", action="allow"), changed=None, actor=None)
    services.bank_import(lines=["md5 " + "ab" * 16 + "\n"], bank="site-art")
    assert not RetroCheck.objects.exists()
    settings.HASHGUARD_RETRO_DAYS = 0
    services.banned_add_image(data=photo("coffee"))
    assert not RetroCheck.objects.exists()


def test_a_check_whose_worker_died_is_taken_over_where_it_stopped(stores) -> None:
    clean(stores, "u/coffee.jpg", "coffee")
    services.banned_add_image(data=photo("coffee"))
    job = RetroCheck.objects.get()
    RetroCheck.objects.filter(pk=job.pk).update(
        state="running", beat_at=timezone.now(), sent_at=timezone.now()
    )
    assert services.retro_check_run(job_id=job.pk).state == "running"  # the first runs on
    assert services.retro_checks_resend(older_than=timedelta(minutes=1)) == 0
    an_hour_ago = timezone.now() - timedelta(hours=1)
    RetroCheck.objects.filter(pk=job.pk).update(beat_at=an_hour_ago, sent_at=an_hour_ago)
    assert services.retro_checks_resend(older_than=timedelta(minutes=1)) == 1
    assert run(job).found == 1


def test_a_ban_joining_a_waiting_check_finds_uploads_recorded_after_it_was_made(stores) -> None:
    clean(stores, "u/rocket.jpg", "rocket")
    services.banned_add_image(data=photo("rocket"))
    later = clean(stores, "u/coffee.jpg", "coffee")  # recorded after the check was made
    services.banned_add_image(data=photo("coffee"))  # joins the waiting check
    done = run(RetroCheck.objects.get())
    assert done.found == 2
    assert Upload.objects.get(pk=later.pk).state == State.QUARANTINED


def test_one_upload_that_cannot_be_quarantined_does_not_stop_the_check(stores) -> None:
    blocked = clean(stores, "u/coffee.jpg", "coffee")
    other = clean(stores, "u/coffee2.jpg", "coffee")
    # Something already sits where the first one's quarantined copy would go.
    (stores / "quarantine" / str(blocked.pk)).mkdir(parents=True)
    (stores / "quarantine" / str(blocked.pk) / "coffee.jpg").write_bytes(b"x")
    services.banned_add_image(data=photo("coffee"))
    done = run(RetroCheck.objects.get())
    assert done.found == 1 and "1 could not be checked again" in done.summary
    assert Upload.objects.get(pk=other.pk).state == State.QUARANTINED
    assert Upload.objects.get(pk=blocked.pk).state == State.CLEAN


def test_a_run_that_lost_its_check_writes_nothing_more(stores) -> None:
    clean(stores, "u/coffee.jpg", "coffee")
    services.banned_add_image(data=photo("coffee"))
    job = RetroCheck.objects.get()
    RetroCheck.objects.filter(pk=job.pk).update(state="running", owner="someone-else")
    from moderation.services import retro

    retro._run(job, RetroCheck.objects.filter(pk=job.pk, owner="mine"))
    job.refresh_from_db()
    assert (job.state, job.done, job.owner) == ("running", 0, "someone-else")


def test_a_look_back_after_a_large_import_builds_no_blocklist_of_its_own(stores) -> None:
    """It checks with the process's blocklist, which holds the new bans already: a second
    one of them would double a worker's memory after an import of millions."""
    import random
    import tracemalloc

    from hashes.detect import probes
    from moderation.blocklist import build_blocklist, current_blocklist
    from moderation.services.common import load

    earlier = clean(stores, "u/coffee.jpg", "coffee")
    rng = random.Random(5)
    listed = [f"pdq {rng.randbytes(32).hex()}\n" for _ in range(50_000)]
    data = (stores / "media" / "u/coffee.jpg").read_bytes()
    services.bank_import(lines=[*listed, f"md5 {hashlib.md5(data).hexdigest()}\n"], bank="big")
    # The process follows the import and checks a file with it, as a worker does.
    current_blocklist().detector.detect(probes(load(data)), "", "")
    tracemalloc.start()
    try:
        build_blocklist()
        building = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert run(RetroCheck.objects.get()).found == 1
        looking_back = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert Upload.objects.get(pk=earlier.pk).state == State.QUARANTINED
    assert looking_back < building / 4, (looking_back, building)
