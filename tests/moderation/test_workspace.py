"""The review workspace: decisions that cannot override a colleague's, batches handed to
each moderator, one upload at a time, group decisions, plain explanations, and images
blurred until revealed (the browser side: test_browser.py)."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from PIL import Image

from moderation import services
from moderation.explain import explain, near_limit
from moderation.models import AuditEvent, ImagePreference, Match, Upload
from tests.images import encode
from tests.moderation.support import (
    BANNED_LIST_URL,
    MODERATOR_PERMISSIONS,
    REVIEW_URL,
    UPLOAD_LIST_URL,
    add_upload,
    client_for,
    decision,
    decode_jpeg,
    make_user,
    photo,
    quarantined_upload,
    re_upload,
    run_action,
)

State = Upload.State
pytestmark = pytest.mark.django_db


def item_url(upload: Upload) -> str:
    return f"{REVIEW_URL}{upload.pk}/"


def copies(stores: Path, count: int) -> list[Upload]:
    """``count`` quarantined re-uploads of one banned photo."""
    services.banned_add_image(data=photo("astronaut"))
    uploads = []
    for index in range(count):
        small = decode_jpeg(photo("astronaut")).resize((200 + index, 200 + index))
        uploads.append(add_upload(stores, f"u/{index}.jpg", encode(small, "JPEG")))
    assert {u.state for u in uploads} == {State.QUARANTINED}
    return uploads


def test_a_stale_page_does_not_override_a_colleague(stores, moderator_client) -> None:
    upload = quarantined_upload(stores)
    seen_by_b = decision(upload, "release")  # B's page, loaded now
    alice = make_user("alice", *MODERATOR_PERMISSIONS)
    client_for(alice).post(REVIEW_URL, decision(upload, "confirm"))
    assert Upload.objects.get(pk=upload.pk).state == State.CONFIRMED

    response = moderator_client.post(REVIEW_URL, seen_by_b, follow=True)

    text = response.content.decode()
    assert "alice: quarantine confirmed at" in text and "nothing was done" in text
    upload.refresh_from_db()
    assert upload.state == State.CONFIRMED and upload.reviewed_by == alice
    assert (stores / "quarantine" / upload.quarantine_name).exists()


def test_a_bulk_release_from_a_stale_list_is_refused(stores, moderator_client) -> None:
    upload = quarantined_upload(stores)
    stale = {f"seen-{upload.pk}": upload.seen()}
    services.upload_confirm(upload_id=upload.pk, actor=make_user("alice", *MODERATOR_PERMISSIONS))
    response = run_action(moderator_client, UPLOAD_LIST_URL, "release", [upload.pk], **stale)
    assert "alice: quarantine confirmed" in response.content.decode()
    assert Upload.objects.get(pk=upload.pk).state == State.CONFIRMED


def test_colleagues_are_handed_different_uploads(stores, settings) -> None:
    settings.HASHGUARD_REVIEW_BATCH = 2
    uploads = copies(stores, 5)
    alice = make_user("alice", *MODERATOR_PERMISSIONS)
    bob = make_user("bob", *MODERATOR_PERMISSIONS)
    queue = Upload.objects.filter(state=State.QUARANTINED)

    mine = services.review_claim(actor=alice, queue=queue)
    theirs = services.review_claim(actor=bob, queue=queue)

    assert mine == [u.pk for u in uploads[:2]] and theirs == [u.pk for u in uploads[2:4]]
    assert services.review_claim(actor=alice, queue=queue) == mine  # renewed, the same
    page = client_for(bob).get(REVIEW_URL).content.decode()
    assert f'id="upload-{uploads[2].pk}"' in page and f'id="upload-{uploads[0].pk}"' not in page
    assert "2 held by colleagues" in page

    # A lease that runs out returns its uploads to the queue.
    Upload.objects.filter(claimed_by=alice).update(claim_expires_at=timezone.now())
    assert services.review_claim(actor=bob, queue=queue, size=4)[:2] == mine


def test_one_upload_at_a_time_with_a_note_and_a_policy(stores, moderator_client) -> None:
    uploads = copies(stores, 2)
    moderator_client.get(REVIEW_URL)  # takes the batch
    page = moderator_client.get(item_url(uploads[0]))
    text = page.content.decode()
    assert "near-identical: resized or recompressed" in text
    assert "Upload 1 of the 2 held for you" in text and "<kbd>c</kbd> confirm" in text
    assert 'class="hg-protected"' in text

    answer = moderator_client.post(
        item_url(uploads[0]),
        {**decision(uploads[0], "confirm"), "note": "same scam again", "label": "scam"},
        HTTP_ACCEPT="application/json",
    )

    assert answer.status_code == 200 and answer.json()["ok"]
    assert answer.json()["next"].endswith(f"/review/{uploads[1].pk}/")
    event = AuditEvent.objects.get(action="upload_confirmed", upload=uploads[0])
    assert (event.note, event.label) == ("same scam again", "scam")


def test_a_stale_decision_on_the_upload_page_says_who_decided(stores, moderator_client) -> None:
    upload = quarantined_upload(stores)
    stale = decision(upload, "release")
    services.upload_confirm(upload_id=upload.pk, actor=make_user("alice", *MODERATOR_PERMISSIONS))
    answer = moderator_client.post(item_url(upload), stale, HTTP_ACCEPT="application/json")
    assert answer.status_code == 409 and "alice" in answer.json()["message"]
    # Without JavaScript: back to the page, with the message.
    page = moderator_client.post(item_url(upload), stale, follow=True)
    assert "alice: quarantine confirmed" in page.content.decode()


def test_every_upload_that_matched_one_ban_is_confirmed_at_once(stores, moderator_client) -> None:
    uploads = copies(stores, 3)
    ban = uploads[0].matches.get().fingerprint_id
    page = moderator_client.get(item_url(uploads[0]))
    assert f"Confirm all 3 waiting uploads that matched ban #{ban}" in page.content.decode()
    [group] = page.context["groups"]
    shown = {f"seen-{pk}": seen for pk, seen in group["uploads"]}

    # Meanwhile a colleague releases one, and a new copy arrives: the same count, but
    # not what the page showed.
    alice = make_user("alice", *MODERATOR_PERMISSIONS)
    services.upload_release(upload_id=uploads[2].pk, actor=alice)
    small = decode_jpeg(photo("astronaut")).resize((230, 230))
    newcomer = add_upload(stores, "u/new.jpg", encode(small, "JPEG"))

    done = moderator_client.post(f"{REVIEW_URL}group/", {"ban": ban, **shown}, follow=True)

    text = done.content.decode()
    assert "2 upload(s) confirmed." in text and "alice: upload released" in text
    assert Upload.objects.filter(state=State.CONFIRMED).count() == 2
    assert Upload.objects.get(pk=uploads[2].pk).state == State.RELEASED
    assert Upload.objects.get(pk=newcomer.pk).state == State.QUARANTINED


def test_the_queue_filters_and_pages(stores, moderator_client, settings) -> None:
    settings.HASHGUARD_REVIEW_BATCH = 2
    uploads = copies(stores, 3)
    ban = uploads[0].matches.get().fingerprint_id
    everything = moderator_client.get(REVIEW_URL, {"view": "all"}).content.decode()
    assert all(f'id="upload-{u.pk}"' in everything for u in uploads)
    assert "3 uploads waiting for review" in everything
    other = moderator_client.get(REVIEW_URL, {"ban": ban + 1000}).content.decode()
    assert "Nothing to review with these filters" in other
    old = moderator_client.get(REVIEW_URL, {"age": "1d"}).content.decode()
    assert "0 uploads waiting" in old
    Upload.objects.filter(pk=uploads[0].pk).update(decided_at=timezone.now() - timedelta(days=2))
    old = moderator_client.get(REVIEW_URL, {"age": "1d", "view": "all"}).content.decode()
    assert f'id="upload-{uploads[0].pk}"' in old and f'id="upload-{uploads[1].pk}"' not in old


def test_explanations_in_plain_words(stores) -> None:
    services.banned_add_image(data=photo("astronaut"))
    mirrored = decode_jpeg(photo("astronaut")).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    upload = add_upload(stores, "mirrored.jpg", encode(mirrored, "JPEG"))
    why = explain(upload.matches.get())
    assert why.headline == "edited: mirrored" and why.undo == "scaleX(-1)"
    exact = add_upload(stores, "exact.jpg", photo("astronaut"))
    assert explain(exact.matches.get()).headline == "exact copy: the same file"
    panel = Match(
        stage="hash",
        rule="pdq<=31",
        placement={"box": [0.5, 0, 1, 0.5]},
        variant="as one panel of a collage or screenshot (25% of the upload)",
    )
    assert explain(panel).headline.startswith("partial: the banned picture fills 25% of the upload")
    assert explain(panel).box == (50.0, 0.0, 50.0, 50.0)
    assert near_limit("pdq<=31+phash<=10", {"pdq": 29, "phash": 3}) == ["pdq 29 (limit 31)"]
    assert near_limit("pdq<=31", {"pdq": 20}) == []


def test_images_are_blurred_everywhere_with_each_moderator_s_own_choice(
    stores, moderator, moderator_client
) -> None:
    upload = quarantined_upload(stores)
    for url in (UPLOAD_LIST_URL, BANNED_LIST_URL, REVIEW_URL, item_url(upload)):
        page = moderator_client.get(url).content.decode()
        assert 'class="hg-protected"' in page and "--hg-blur: 24px" in page, url
    response = moderator_client.post(
        "/admin/preferences/", {"blur": 8, "greyscale": "on", "reveal": "hover"}, follow=True
    )
    assert "Your image preferences are saved." in response.content.decode()
    assert ImagePreference.objects.get(user=moderator).reveal == "hover"
    page = moderator_client.get(REVIEW_URL).content.decode()
    assert "--hg-blur: 8px; --hg-grey: 1" in page and '"hover" === "hover"' in page


def test_the_flag_form_shows_what_is_being_banned(stores, moderator_client) -> None:
    clean = add_upload(stores, "fine.jpg", re_upload("coffee"))
    page = run_action(moderator_client, UPLOAD_LIST_URL, "flag", [clean.pk])
    assert f'src="/files/upload/{clean.pk}/?size=thumb"' in page.content.decode()


def test_the_admin_opens_on_a_dashboard(stores, moderator_client) -> None:
    uploads = copies(stores, 2)
    add_upload(stores, "fine.jpg", re_upload("coffee"))
    ban = uploads[0].matches.get().fingerprint_id
    services.upload_confirm(
        upload_id=uploads[0].pk, actor=make_user("alice", *MODERATOR_PERMISSIONS)
    )

    page = moderator_client.get("/admin/").content.decode()

    assert '<span class="hg-big">1</span> waiting' in page
    assert 'href="/admin/moderation/upload/review/"' in page
    assert '?state=clean">Clean</a></th><td>1</td>' in page
    assert '<svg class="hg-chart"' in page and "<title>" in page
    assert f">#{ban}</a></th><td>other</td><td>local</td><td>2 hits</td>" in page
    assert '?actor__username=alice">alice</a></th><td>1</td>' in page
    assert "Quarantine confirmed" in page and "alice, " in page  # recent actions


def test_the_audit_log_filters_links_and_exports(stores, moderator, moderator_client) -> None:
    upload = quarantined_upload(stores)
    services.upload_confirm(upload_id=upload.pk, actor=moderator, note="seen it", label="scam")
    history = moderator_client.get(f"{UPLOAD_LIST_URL}{upload.pk}/history/")
    assert history.status_code == 302
    assert history["Location"].endswith(f"/auditevent/?upload__id__exact={upload.pk}")
    listed = moderator_client.get(history["Location"]).content.decode()
    assert "Quarantine confirmed" in listed and "Upload quarantined" in listed
    assert f'href="/admin/moderation/upload/{upload.pk}/change/"' in listed
    mine = moderator_client.get("/admin/moderation/auditevent/", {"actor__username": "moderator"})
    assert '<td class="field-action">Upload quarantined</td>' not in mine.content.decode()
    assert '<td class="field-action">Quarantine confirmed</td>' in mine.content.decode()

    export = moderator_client.get(
        "/admin/moderation/auditevent/export/", {"action__exact": "upload_confirmed"}
    )
    lines = b"".join(export.streaming_content).decode().splitlines()
    assert lines[0].startswith("time,action,moderator,upload,path")
    assert len(lines) == 2 and "upload_confirmed,moderator" in lines[1]
    assert lines[1].endswith("seen it,scam")


def test_every_decision_from_the_list_needs_the_state_the_list_showed(
    stores, moderator_client
) -> None:
    upload = quarantined_upload(stores)
    for action in ("confirm", "retry", "release"):
        refused = run_action(
            moderator_client, UPLOAD_LIST_URL, action, [upload.pk], **{f"seen-{upload.pk}": ""}
        )
        assert "not shown on the page you acted from" in refused.content.decode(), action
    assert Upload.objects.get(pk=upload.pk).state == State.QUARANTINED


def test_a_stale_flag_changes_nothing(stores, moderator_client) -> None:
    fine = add_upload(stores, "fine.jpg", re_upload("coffee"))
    stale = {f"seen-{fine.pk}": "clean:0:"}
    response = run_action(
        moderator_client, UPLOAD_LIST_URL, "flag", [fine.pk], apply="1", category="scam", **stale
    )
    assert "nothing was done" in response.content.decode()
    assert Upload.objects.get(pk=fine.pk).state == State.CLEAN


def test_working_through_uploads_keeps_them_held(stores, moderator, moderator_client) -> None:
    uploads = copies(stores, 2)
    moderator_client.get(REVIEW_URL)
    soon = timezone.now() + timedelta(seconds=5)
    Upload.objects.filter(claimed_by=moderator).update(claim_expires_at=soon)
    moderator_client.get(item_url(uploads[0]))
    held = Upload.objects.get(pk=uploads[1].pk)
    assert held.claim_expires_at > soon + timedelta(seconds=60)


def test_the_csv_export_keeps_formulas_from_running(stores, moderator, moderator_client) -> None:
    upload = quarantined_upload(stores)
    services.upload_confirm(upload_id=upload.pk, actor=moderator, note="=HYPERLINK(evil)")
    export = moderator_client.get("/admin/moderation/auditevent/export/")
    text = b"".join(export.streaming_content).decode()
    assert "'=HYPERLINK(evil)" in text and ",=HYPERLINK" not in text


def test_the_dashboard_shows_each_part_only_to_those_allowed(stores) -> None:
    quarantined_upload(stores)
    viewer = client_for(make_user("viewer", "view_upload"))
    page = viewer.get("/admin/").content.decode()
    assert 'id="hg-queue"' in page
    assert 'id="hg-decisions"' not in page and 'id="hg-top-bans"' not in page
