"""The admin as a moderator uses it: over HTTP, with a real database and real files.

Quarantined uploads are made the way the pipeline makes them, by calling the services a
worker calls; in these tests the on-commit hook that would queue a Celery task never fires.
"""

import os
import stat

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from django.utils.html import escape
from PIL import Image
from pytest_django.asserts import assertContains, assertNotContains, assertRedirects

from hashes.algorithms import Fingerprint, fingerprint_frames
from hashes.loading import load_image
from moderation import services
from moderation.models import (
    AuditEvent,
    BannedFingerprint,
    Category,
    Match,
    Upload,
    WorkerHeartbeat,
)
from tests.images import encode
from tests.moderation.support import (
    BAN_URL,
    BANNED_LIST_URL,
    MODERATOR_PERMISSIONS,
    PDQ,
    REVIEW_URL,
    UPLOAD_LIST_URL,
    add_upload,
    animation,
    blocklist_version,
    client_for,
    decision,
    decode_jpeg,
    distances_shown,
    image_url,
    make_user,
    photo,
    quarantined_upload,
    re_upload,
    run_action,
)

pytestmark = pytest.mark.django_db


def test_ban_an_image_by_uploading_it(stores, moderator, moderator_client):
    data = photo("astronaut")
    before = blocklist_version()

    response = moderator_client.post(
        BAN_URL,
        {
            "image": SimpleUploadedFile("banned.jpg", data, "image/jpeg"),
            "category": Category.SCAM,
            "reason": "Known scam",
        },
        follow=True,
    )

    assertRedirects(response, BANNED_LIST_URL)
    row = BannedFingerprint.objects.get()
    assertContains(response, f"Banned as #{row.pk}; every worker uses it")
    expected = fingerprint_frames(load_image(data))[0]
    assert row.fingerprint() == expected
    assert (row.source, row.category, row.reason) == ("image", "scam", "Known scam")
    assert row.added_by == moderator and row.active
    reference = stores / "references" / row.reference_name
    assert reference.read_bytes() == data
    assert stat.S_IMODE(os.stat(reference).st_mode) == 0o600
    assert blocklist_version() != before
    event = AuditEvent.objects.get(action=AuditEvent.Action.BAN_ADDED)
    assert (event.actor, event.fingerprint, event.detail) == (moderator, row, "Known scam")
    # The changelist shows the reference through the protected view, never a file URL.
    assertContains(response, image_url("reference", row.pk, thumb=True))


def test_banning_an_animation_adds_one_row_per_distinct_frame(stores, moderator_client):
    response = moderator_client.post(
        BAN_URL,
        {
            "image": SimpleUploadedFile("banned.gif", animation("chelsea", "coffee"), "image/gif"),
            "category": Category.OTHER,
        },
        follow=True,
    )

    rows = list(BannedFingerprint.objects.order_by("frame"))
    assert [row.frame for row in rows] == [0, 1]
    assert len({row.reference_name for row in rows}) == 1
    assertContains(response, f"Banned as #{rows[0].pk}, #{rows[1].pk};")


def test_banning_a_corrupt_file_shows_the_error_on_the_form(stores, moderator_client):
    before = blocklist_version()

    response = moderator_client.post(
        BAN_URL,
        {
            "image": SimpleUploadedFile("broken.jpg", b"\xff\xd8\xff\xe0" + b"garbage" * 100),
            "category": Category.OTHER,
        },
    )

    assert response.status_code == 200
    assertContains(response, "The image header is damaged")
    assert not BannedFingerprint.objects.exists()
    assert not list((stores / "references").iterdir())
    assert blocklist_version() == before


def test_ban_a_pasted_pdq_hash(stores, moderator, moderator_client):
    before = blocklist_version()
    pasted = " ".join(PDQ.upper()[i : i + 16] for i in range(0, 64, 16))

    response = moderator_client.post(
        BAN_URL,
        {
            "pdq": pasted,
            "category": Category.HATE,
            "reason": "Shared by a partner",
        },
        follow=True,
    )

    assertRedirects(response, BANNED_LIST_URL)
    row = BannedFingerprint.objects.get()
    assert (row.pdq, row.pdq_quality, row.phash, row.dhash) == (PDQ, 100, "", "")
    assert (row.source, row.reference_name, row.added_by) == ("hash", "", moderator)
    assert blocklist_version() != before
    assertContains(response, "pasted hash")
    assert AuditEvent.objects.filter(action="ban_added", fingerprint=row).exists()


@pytest.mark.parametrize(
    "pasted, message",
    [
        ("z" * 64, "which are not hex digits"),
        (PDQ[:60], "has 60 hex digits but a pdq hash has exactly 64"),
    ],
)
def test_a_malformed_hash_is_rejected_with_a_message(stores, moderator_client, pasted, message):
    response = moderator_client.post(BAN_URL, {"pdq": pasted, "category": Category.OTHER})

    assert response.status_code == 200
    assertContains(response, message)
    assert not BannedFingerprint.objects.exists()


def test_an_image_and_a_hash_together_are_refused(stores, moderator_client):
    response = moderator_client.post(
        BAN_URL,
        {
            "image": SimpleUploadedFile("banned.jpg", photo("astronaut"), "image/jpeg"),
            "pdq": PDQ,
            "category": Category.OTHER,
        },
    )

    assertContains(response, "Upload an image or paste hashes, not both or neither.")
    assert not BannedFingerprint.objects.exists()
    assert not list((stores / "references").iterdir())


def test_the_ban_form_needs_an_image_or_a_hash(stores, moderator_client):
    response = moderator_client.post(BAN_URL, {"category": Category.OTHER})

    assertContains(response, "Upload an image or paste hashes, not both or neither.")


def test_deactivate_and_reactivate_change_the_blocklist_version_and_change_what_matches(
    stores, moderator_client
):
    [row] = services.banned_add_image(data=photo("astronaut"))
    before = blocklist_version()

    response = run_action(moderator_client, BANNED_LIST_URL, "deactivate", [row.pk])

    assertContains(response, "1 banned fingerprint(s) deactivated.")
    row.refresh_from_db()
    assert not row.active
    deactivated = blocklist_version()
    assert deactivated != before
    assert add_upload(stores, "a.jpg", re_upload("astronaut")).state == Upload.State.CLEAN

    response = run_action(moderator_client, BANNED_LIST_URL, "reactivate", [row.pk])

    assertContains(response, "1 banned fingerprint(s) reactivated.")
    row.refresh_from_db()
    assert row.active
    assert blocklist_version() not in (before, deactivated)
    assert add_upload(stores, "b.jpg", re_upload("astronaut")).state == Upload.State.QUARANTINED
    assert list(
        AuditEvent.objects.filter(fingerprint=row).order_by("id").values_list("action", flat=True)
    ) == ["ban_added", "ban_deactivated", "ban_activated"]


def test_delete_removes_the_row_and_then_the_reference_once_unused(
    stores, moderator_client, django_capture_on_commit_callbacks
):
    first, second = services.banned_add_image(data=animation("chelsea", "coffee"))
    reference = stores / "references" / first.reference_name
    before = blocklist_version()

    with django_capture_on_commit_callbacks(execute=True):
        response = moderator_client.post(
            f"/admin/moderation/bannedfingerprint/{first.pk}/delete/",
            {"post": "yes"},
            follow=True,
        )

    assertRedirects(response, BANNED_LIST_URL)
    assert list(BannedFingerprint.objects.all()) == [second]
    assert reference.exists(), "the other frame still uses the reference image"
    assert blocklist_version() != before

    with django_capture_on_commit_callbacks(execute=True):
        moderator_client.post(
            f"/admin/moderation/bannedfingerprint/{second.pk}/delete/", {"post": "yes"}
        )

    assert not BannedFingerprint.objects.exists()
    assert not reference.exists()
    assert AuditEvent.objects.filter(action="ban_deleted").count() == 2


def test_bulk_delete_removes_the_rows_and_their_references(
    stores, moderator_client, django_capture_on_commit_callbacks
):
    rows = [services.banned_add_image(data=photo(name))[0] for name in ("astronaut", "chelsea")]
    kept = services.banned_add_image(data=photo("coffee"))[0]
    ids = [row.pk for row in rows]
    before = blocklist_version()

    confirmation = run_action(moderator_client, BANNED_LIST_URL, "delete_selected", ids)
    assertContains(confirmation, "Are you sure you want to delete the selected banned")
    with django_capture_on_commit_callbacks(execute=True):
        response = moderator_client.post(
            BANNED_LIST_URL,
            {
                "action": "delete_selected",
                ACTION_CHECKBOX_NAME: ids,
                "post": "yes",
            },
            follow=True,
        )

    assertContains(response, "Successfully deleted 2 banned fingerprints.")
    assert list(BannedFingerprint.objects.all()) == [kept]
    assert sorted(p.name for p in (stores / "references").iterdir()) == [kept.reference_name]
    assert blocklist_version() != before


def test_editing_a_ban_changes_only_its_category_and_reason(stores, moderator_client):
    [row] = services.banned_add_image(data=photo("astronaut"))
    before = blocklist_version()

    response = moderator_client.post(
        f"/admin/moderation/bannedfingerprint/{row.pk}/change/",
        {
            "category": Category.VIOLENCE,
            "reason": "Reclassified",
            "pdq": "0" * 64,
        },
        follow=True,
    )

    assertRedirects(response, BANNED_LIST_URL)
    pdq = row.pdq
    row.refresh_from_db()
    assert (row.category, row.reason, row.pdq) == ("violence", "Reclassified", pdq)
    assert blocklist_version() == before
    # Audited like every other action, with what changed.
    event = AuditEvent.objects.get(action="ban_changed", fingerprint=row)
    assert event.actor.username == "moderator"
    assert "category other → violence" in event.detail and "Reclassified" in event.detail


# --- uploads and the review queue ---------------------------------------------------------


def test_uploads_changelist_shows_protected_thumbnails_and_filters_by_state(
    stores, moderator_client
):
    quarantined = quarantined_upload(stores)
    clean = add_upload(stores, "users/8/cat.png", photo("coffee", "PNG"))
    assert clean.state == Upload.State.CLEAN

    response = moderator_client.get(UPLOAD_LIST_URL)

    assertContains(response, image_url("upload", quarantined.pk, thumb=True))
    assertContains(response, image_url("upload", clean.pk, thumb=True))
    assertContains(response, "Review queue")
    assertNotContains(response, str(stores))

    response = moderator_client.get(UPLOAD_LIST_URL, {"state": "quarantined"})

    assertContains(response, quarantined.path)
    assertNotContains(response, clean.path)

    thumbnail = moderator_client.get(image_url("upload", clean.pk, thumb=True))
    assert thumbnail.status_code == 200
    assert max(decode_jpeg(thumbnail.content).size) <= 240


def test_an_upload_page_shows_its_matches_to_anyone_who_may_view_uploads(stores):
    upload = quarantined_upload(stores)
    match = upload.matches.get()
    viewer = client_for(make_user("viewer", "view_upload", "view_bannedfingerprint"))

    response = viewer.get(f"/admin/moderation/upload/{upload.pk}/change/")

    assertContains(response, image_url("reference", match.fingerprint_id, thumb=True))
    assertContains(response, escape(match.rule))
    assertContains(response, distances_shown(match))


def test_review_queue_shows_the_upload_beside_the_banned_image_with_distances(
    stores, moderator_client
):
    upload = quarantined_upload(stores)
    match = Match.objects.select_related("fingerprint").get(upload=upload)
    # The distances the moderator sees are the real ones between the two images.
    uploaded = fingerprint_frames(load_image(re_upload("astronaut")))[0]
    assert match.distances == uploaded.distance(match.fingerprint.fingerprint())
    assert 0 < match.distances["pdq"] <= 31

    response = moderator_client.get(REVIEW_URL)

    assertContains(response, "1 upload waiting for review")
    assertContains(response, upload.path)
    assertContains(response, image_url("upload", upload.pk, thumb=True))
    assertContains(response, image_url("reference", match.fingerprint_id, thumb=True))
    assertContains(response, distances_shown(match))
    assertContains(response, escape(match.rule))
    assertContains(response, "Known scam")
    for url in (image_url("upload", upload.pk), image_url("reference", match.fingerprint_id)):
        assert moderator_client.get(url)["Content-Type"] == "image/jpeg"


def test_review_queue_still_shows_an_upload_whose_ban_was_deleted(stores, moderator_client):
    upload = quarantined_upload(stores)
    match = upload.matches.get()
    services.banned_delete(fingerprint_ids=[match.fingerprint_id], actor=None)

    response = moderator_client.get(REVIEW_URL)

    assertContains(response, upload.path)
    assertContains(response, image_url("upload", upload.pk, thumb=True))
    assertContains(response, "The banned fingerprint it matched has been deleted since")
    # Why it was quarantined is kept: the rule and the distances.
    assertContains(response, escape(match.rule))
    assertContains(response, distances_shown(match))
    assertContains(response, 'value="release"')


def test_check_again_retries_an_upload_that_failed_for_a_passing_reason(
    stores, moderator, moderator_client
):
    failed = add_upload(stores, "users/3/a.jpg", photo("coffee"))
    services.banned_add_image(data=photo("coffee"))  # banned while the upload was failing
    Upload.objects.filter(pk=failed.pk).update(
        state=Upload.State.ERROR, error_code="internal", error="database was down"
    )
    (stores / "media" / "users" / "3" / "link.jpg").symlink_to(stores / "elsewhere.jpg")
    link, _ = services.upload_register(path=stores / "media" / "users" / "3" / "link.jpg")

    response = run_action(moderator_client, UPLOAD_LIST_URL, "retry", [failed.pk, link.pk])

    assertContains(response, "1 upload(s) queued to be checked again.")
    assertContains(
        response, "/3/link.jpg: Only an upload in error or held whose file could be read"
    )
    failed.refresh_from_db()
    assert failed.state == Upload.State.PENDING and not failed.error
    assert AuditEvent.objects.filter(action="upload_retried", upload=failed).exists()
    assert services.upload_process(upload_id=failed.pk).state == Upload.State.QUARANTINED


def test_confirm_keeps_the_file_in_quarantine(stores, moderator, moderator_client):
    upload = quarantined_upload(stores)

    response = moderator_client.post(
        REVIEW_URL, decision(upload, "confirm"), follow=True
    )

    assertRedirects(response, REVIEW_URL)
    assertContains(response, "1 upload(s) confirmed.")
    assertContains(response, "Nothing to review.")
    upload.refresh_from_db()
    assert (upload.state, upload.reviewed_by) == (Upload.State.CONFIRMED, moderator)
    assert (stores / "quarantine" / upload.quarantine_name).read_bytes() == re_upload("astronaut")
    assert not (stores / "media" / upload.path).exists()
    assert AuditEvent.objects.filter(action="upload_confirmed", actor=moderator).exists()


def test_release_puts_the_file_back_at_its_original_path(stores, moderator, moderator_client):
    upload = quarantined_upload(stores)
    quarantined = stores / "quarantine" / upload.quarantine_name

    response = moderator_client.post(
        REVIEW_URL, decision(upload, "release"), follow=True
    )

    assertContains(response, "1 upload(s) released.")
    upload.refresh_from_db()
    assert (upload.state, upload.reviewed_by) == (Upload.State.RELEASED, moderator)
    assert (stores / "media" / "users/7/holiday.jpg").read_bytes() == re_upload("astronaut")
    assert not quarantined.exists()
    assert AuditEvent.objects.filter(action="upload_released", actor=moderator).exists()


def test_release_refused_when_a_file_took_the_original_path(stores, moderator_client):
    upload = quarantined_upload(stores)
    (stores / "media" / upload.path).write_bytes(b"someone else's file")

    response = moderator_client.post(
        REVIEW_URL, decision(upload, "release"), follow=True
    )

    assertContains(response, "move it away, then release again.")
    upload.refresh_from_db()
    assert upload.state == Upload.State.QUARANTINED
    assert (stores / "quarantine" / upload.quarantine_name).exists()


@pytest.mark.parametrize(
    "data",
    [
        {"upload": "nope", "decision": "confirm"},
        {"decision": "confirm"},
        {"upload": "{pk}", "decision": "delete"},
    ],
)
def test_review_queue_rejects_malformed_decisions(stores, moderator_client, data):
    upload = quarantined_upload(stores)

    response = moderator_client.post(
        REVIEW_URL,
        {key: value.format(pk=upload.pk) for key, value in data.items()},
        follow=True,
    )

    assertRedirects(response, REVIEW_URL)
    assertContains(response, "Choose Confirm or Release for an upload in the queue.")
    upload.refresh_from_db()
    assert upload.state == Upload.State.QUARANTINED


def test_confirm_and_release_actions_on_the_changelist(stores, moderator_client):
    upload = quarantined_upload(stores)
    clean = add_upload(stores, "users/8/cat.jpg", photo("coffee"))

    response = run_action(moderator_client, UPLOAD_LIST_URL, "release", [clean.pk])

    assertContains(response, "Only a quarantined or held upload can be released.")
    clean.refresh_from_db()
    assert clean.state == Upload.State.CLEAN

    response = run_action(moderator_client, UPLOAD_LIST_URL, "confirm", [upload.pk])

    assertContains(response, "1 upload(s) confirmed.")
    upload.refresh_from_db()
    assert upload.state == Upload.State.CONFIRMED


def test_flag_as_banned_asks_for_a_category_then_bans_and_quarantines(
    stores, moderator, moderator_client
):
    upload = add_upload(stores, "users/9/poster.jpg", photo("rocket"))
    assert upload.state == Upload.State.CLEAN
    before = blocklist_version()

    form = run_action(moderator_client, UPLOAD_LIST_URL, "flag", [upload.pk])

    assertContains(form, "Flag uploads as banned")
    assertContains(form, upload.path)
    assertContains(form, 'name="category"')
    assert Upload.objects.get(pk=upload.pk).state == Upload.State.CLEAN
    # The form sends on the state the list showed the upload in.
    assertContains(form, f'name="seen-{upload.pk}" value="{upload.seen()}"')

    response = moderator_client.post(
        UPLOAD_LIST_URL,
        {
            "action": "flag",
            ACTION_CHECKBOX_NAME: [upload.pk],
            f"seen-{upload.pk}": upload.seen(),
            "apply": "Flag as banned",
            "category": Category.HATE,
            "reason": "Hate symbol on the poster",
        },
        follow=True,
    )

    assertContains(response, "1 upload(s) flagged as banned.")
    upload.refresh_from_db()
    assert (upload.state, upload.reviewed_by) == (Upload.State.CONFIRMED, moderator)
    row = BannedFingerprint.objects.get()
    assert (row.source, row.source_upload, row.category, row.reason) == (
        "upload",
        upload,
        "hate",
        "Hate symbol on the poster",
    )
    first = upload.fingerprints[0]
    assert row.fingerprint() == Fingerprint(first["hashes"], first["pdq_quality"])
    assert (stores / "quarantine" / upload.quarantine_name).read_bytes() == photo("rocket")
    assert not (stores / "media" / upload.path).exists()
    assert blocklist_version() != before
    # The next copy of it is caught.
    assert add_upload(stores, "users/10/copy.jpg", re_upload("rocket")).state == "quarantined"


def test_flag_form_with_a_bad_category_is_shown_again(stores, moderator_client):
    upload = add_upload(stores, "users/9/poster.jpg", photo("rocket"))

    response = moderator_client.post(
        UPLOAD_LIST_URL,
        {
            "action": "flag",
            ACTION_CHECKBOX_NAME: [upload.pk],
            "apply": "Flag as banned",
            "category": "not-a-category",
        },
        follow=True,
    )

    assertContains(response, "Select a valid choice.")
    assert not BannedFingerprint.objects.exists()
    assert Upload.objects.get(pk=upload.pk).state == Upload.State.CLEAN


# --- permissions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        UPLOAD_LIST_URL,
        REVIEW_URL,
        BAN_URL,
        BANNED_LIST_URL,
        "/files/upload/1/",
        "/files/reference/1/",
    ],
)
def test_anonymous_visitors_are_sent_to_the_login_page(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


def test_non_staff_users_are_refused_even_with_permissions(stores):
    upload = add_upload(stores, "users/8/cat.jpg", photo("coffee"))
    client = client_for(make_user("customer", *MODERATOR_PERMISSIONS, staff=False))

    for url in (UPLOAD_LIST_URL, REVIEW_URL, image_url("upload", upload.pk)):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url
    response = client.post(REVIEW_URL, decision(upload, "confirm"))
    assert response.status_code == 302


def test_staff_without_review_permission_cannot_review(stores):
    upload = quarantined_upload(stores)
    clean = add_upload(stores, "users/8/cat.jpg", photo("coffee"))
    viewer = client_for(make_user("viewer", "view_upload", "view_bannedfingerprint"))

    assert viewer.get(REVIEW_URL).status_code == 403
    assert viewer.post(REVIEW_URL, decision(upload, "release")).status_code == 403

    changelist = viewer.get(UPLOAD_LIST_URL)
    assert changelist.status_code == 200
    assertNotContains(changelist, "Review queue")
    assertNotContains(changelist, image_url("upload", upload.pk, thumb=True))
    assertContains(changelist, image_url("upload", clean.pk, thumb=True))
    page = viewer.get(f"/admin/moderation/upload/{upload.pk}/change/")
    assertNotContains(page, image_url("upload", upload.pk, thumb=True))
    assertContains(page, upload.path)
    action_form = changelist.context["action_form"]
    assert action_form is None or not {
        value for value, _ in action_form.fields["action"].choices
    } & {"confirm", "release", "flag"}

    for action in ("confirm", "release", "flag"):
        response = run_action(
            viewer,
            UPLOAD_LIST_URL,
            action,
            [upload.pk, clean.pk],
            apply="Flag as banned",
            category=Category.OTHER,
        )
        assert response.status_code == 200
    assert Upload.objects.get(pk=upload.pk).state == Upload.State.QUARANTINED
    assert Upload.objects.get(pk=clean.pk).state == Upload.State.CLEAN
    assert not BannedFingerprint.objects.filter(source="upload").exists()

    assert viewer.get(image_url("upload", upload.pk)).status_code == 403
    assert viewer.get(image_url("upload", clean.pk))["Content-Type"] == "image/jpeg"


def test_banning_a_plain_image_warns_that_only_exact_copies_are_caught(stores, moderator_client):
    flat = encode(Image.new("RGB", (300, 200), (200, 200, 190)), "PNG")
    response = moderator_client.post(
        BAN_URL,
        {"image": SimpleUploadedFile("flat.png", flat, "image/png"), "category": Category.OTHER},
        follow=True,
    )
    row = BannedFingerprint.objects.get()
    assertContains(response, f"Banned as #{row.pk}")
    assertContains(response, "too plain to match edited copies")
    assertContains(response, "exact copies only")


def test_review_queue_says_how_an_edited_copy_shows_the_banned_image(stores, moderator_client):
    services.banned_add_image(data=photo("astronaut"))
    mirrored = decode_jpeg(photo("astronaut")).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    upload = add_upload(stores, "mirrored.jpg", encode(mirrored, "JPEG"))
    assert upload.state == Upload.State.QUARANTINED

    response = moderator_client.get(REVIEW_URL)

    assertContains(response, '<span class="match-stage">hash</span>', html=False)
    assertContains(response, '<span class="match-variant">mirrored</span>', html=False)


def test_review_page_can_let_exact_copies_of_a_released_upload_pass(stores, moderator_client):
    upload = quarantined_upload(stores)
    response = moderator_client.post(
        REVIEW_URL, decision(upload, "allow"), follow=True
    )
    assertContains(response, "exact copies pass the bans they matched")
    assert upload.matches.get().allowed
    assert Upload.objects.get(pk=upload.pk).state == Upload.State.RELEASED
    # The plain Release puts back this file only.
    other = add_upload(stores, "users/2/again.jpg", re_upload("astronaut"))
    assert other.state == Upload.State.CLEAN  # its exact copy passes now
    variant = add_upload(stores, "users/3/variant.jpg", photo("astronaut"))
    moderator_client.post(REVIEW_URL, decision(variant, "release"))
    assert not variant.matches.get().allowed


def test_stalled_workers_are_shown_to_moderators(stores, moderator_client):
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        name="host-a:123",
        hostname="host-a",
        pid=123,
        started_at=now,
        beat_at=now,
        waiting=[41],
        stalled_since=now,
        stall="a task received 31 s ago has not started",
    )
    WorkerHeartbeat.objects.create(
        name="host-b:9", hostname="host-b", pid=9, started_at=now, beat_at=now
    )

    for url in (UPLOAD_LIST_URL, REVIEW_URL):
        response = moderator_client.get(url)
        assertContains(response, "Worker host-a:123 stalled")
        assertContains(response, "has not started")
        assertNotContains(response, "host-b:9")


def test_a_held_upload_waits_in_the_review_queue_with_its_reason(stores, moderator_client):
    cut = encode(Image.new("RGB", (64, 64), (200, 30, 30)), "JPEG")[:200]
    held = add_upload(stores, "users/4/cut.jpg", cut)
    assert held.state == Upload.State.HELD

    response = moderator_client.get(REVIEW_URL)

    assertContains(response, "1 upload waiting for review")
    assertContains(response, "Held upload")
    assertContains(response, "Could not be checked, so it is held for a moderator")
    # Release puts it back; it was never matched, so there is no copy to let pass.
    assertNotContains(response, 'value="allow"')
    response = moderator_client.post(
        REVIEW_URL, decision(held, "release"), follow=True
    )
    assertContains(response, "1 upload(s) released.")
    assert (stores / "media" / "users/4/cut.jpg").read_bytes() == cut
