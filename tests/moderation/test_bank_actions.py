"""What a bank does with a match: quarantine, leave in place for review, or allow."""

from pathlib import Path

import pytest
from PIL import Image

from moderation import selectors, services
from moderation.models import AuditEvent, Bank, BannedFingerprint, Upload
from tests.images import encode, photo
from tests.moderation.support import PDQ, REVIEW_URL

State = Upload.State
pytestmark = pytest.mark.django_db


def bank_of(name: str, action: str, picture: str, **limits: int) -> Bank:
    """A bank holding the banned image ``picture``, with its action and limits."""
    bank = services.bank_save(
        bank=Bank(name=name, source=Bank.Source.MANUAL, action=action, **limits),
        changed=None,
        actor=None,
    )
    rows = services.banned_add_image(data=encode(photo(picture), "PNG"))
    BannedFingerprint.objects.filter(pk__in=[row.pk for row in rows]).update(bank=bank)
    services.blocklist_bump()
    return bank


def drop(stores: Path, name: str, image: Image.Image) -> Upload:
    path = stores / "media" / name
    path.write_bytes(encode(image, "JPEG", quality=85))
    upload, _ = services.upload_register(path=path)
    return services.upload_process(upload_id=upload.pk)


def test_a_review_bank_leaves_the_file_in_place_for_a_moderator(stores: Path, moderator) -> None:
    bank_of("watch", Bank.Act.REVIEW, "coffee")
    upload = drop(stores, "a.jpg", photo("coffee").resize((300, 200)))

    assert upload.state == State.REVIEW and not upload.quarantine_name
    assert (stores / "media" / "a.jpg").exists()
    assert upload.matches.get().fingerprint.bank.name == "watch"
    assert AuditEvent.objects.filter(action="upload_to_review", upload=upload).exists()
    assert list(selectors.review_queue()) == [upload]

    confirmed = services.upload_confirm(upload_id=upload.pk, actor=moderator)
    assert confirmed.state == State.CONFIRMED
    assert not (stores / "media" / "a.jpg").exists()
    assert (stores / "quarantine" / confirmed.quarantine_name).exists()


def test_releasing_an_upload_left_for_review_leaves_it_on_the_site(stores: Path, moderator) -> None:
    bank_of("watch", Bank.Act.REVIEW, "coffee")
    upload = drop(stores, "a.jpg", photo("coffee"))
    released = services.upload_release(upload_id=upload.pk, actor=moderator)
    assert released.state == State.RELEASED and (stores / "media" / "a.jpg").exists()
    # The same file seen again is the same upload, not a new match.
    again, created = services.upload_register(path=stores / "media" / "a.jpg")
    assert not created and again.pk == upload.pk


def test_a_file_changed_while_it_waits_for_review_is_not_moved(stores: Path, moderator) -> None:
    bank_of("watch", Bank.Act.REVIEW, "coffee")
    upload = drop(stores, "a.jpg", photo("coffee"))
    (stores / "media" / "a.jpg").write_bytes(encode(photo("rocket"), "JPEG"))
    with pytest.raises(services.ActionRefused, match="changed"):
        services.upload_confirm(upload_id=upload.pk, actor=moderator)
    assert (stores / "media" / "a.jpg").exists()
    assert Upload.objects.get(pk=upload.pk).state == State.REVIEW


def test_a_quarantine_bank_wins_over_a_review_bank(stores: Path) -> None:
    bank_of("watch", Bank.Act.REVIEW, "coffee")
    services.banned_add_image(data=encode(photo("coffee"), "JPEG"))
    upload = drop(stores, "a.jpg", photo("coffee"))
    assert upload.state == State.QUARANTINED
    assert {m.fingerprint.bank.name for m in upload.matches.all()} == {"watch", "local"}


def test_an_allow_bank_voids_the_other_banks_matches(stores: Path, moderator_client) -> None:
    services.banned_add_image(data=encode(photo("astronaut"), "JPEG"))
    bank_of("site-art", Bank.Act.ALLOW, "astronaut")
    upload = drop(stores, "logo.jpg", photo("astronaut").resize((256, 256)))

    assert upload.state == State.CLEAN and (stores / "media" / "logo.jpg").exists()
    matches = {m.fingerprint.bank.name: m for m in upload.matches.all()}
    assert matches["local"].voided and not matches["site-art"].voided
    event = AuditEvent.objects.get(action="upload_allowed", upload=upload)
    assert "known-good" in event.detail and "void" in event.detail
    page = moderator_client.get(f"/admin/moderation/upload/{upload.pk}/change/")
    assert b"site-art (known-good" in page.content


def test_an_allow_bank_does_not_void_a_banned_picture_beside_its_own(stores: Path) -> None:
    services.banned_add_image(data=encode(photo("coffee"), "JPEG"))
    bank_of("site-art", Bank.Act.ALLOW, "astronaut")
    canvas = Image.new("RGB", (640, 640), "white")
    for index, name in enumerate(("astronaut", "coffee", "rocket", "chelsea")):
        canvas.paste(photo(name).resize((316, 316)), (index % 2 * 324, index // 2 * 324))
    upload = drop(stores, "collage.jpg", canvas)
    assert upload.state == State.QUARANTINED
    assert not upload.matches.filter(voided=True).exists()


def test_a_bank_s_own_limits_replace_the_rule_s(stores: Path, moderator_client) -> None:
    bank = bank_of("strict", Bank.Act.QUARANTINE, "coffee")
    pdq_only = {"phash": "", "dhash": "", "colours": None, "features": None}
    BannedFingerprint.objects.filter(bank=bank).update(**pdq_only)
    edited = photo("coffee").resize((200, 133))
    assert drop(stores, "a.jpg", edited).state == State.QUARANTINED

    response = moderator_client.post(
        f"/admin/moderation/bank/{bank.pk}/change/",
        {"description": "", "source": "manual", "action": "quarantine", "pdq_limit": "0"},
    )
    assert response.status_code == 302, response.content
    bank.refresh_from_db()
    assert bank.limits() == (("pdq", 0),)
    assert AuditEvent.objects.filter(action="bank_changed", detail__contains="pdq <= 0").exists()
    assert drop(stores, "b.jpg", edited).state == State.CLEAN


def test_banks_list_shows_action_and_limits(moderator_client) -> None:
    bank_of("watch", Bank.Act.REVIEW, "coffee", pdq_limit=20)
    page = moderator_client.get("/admin/moderation/bank/")
    assert b"pdq \xe2\x89\xa4 20" in page.content and b"Leave the file in place" in page.content


def test_the_review_queue_says_when_a_file_is_still_on_the_site(
    stores: Path, moderator_client
) -> None:
    bank_of("watch", Bank.Act.REVIEW, "coffee")
    drop(stores, "a.jpg", photo("coffee"))
    page = moderator_client.get(REVIEW_URL)
    assert b"Upload, still on the site" in page.content and b"Leave it on the site" in page.content


def test_the_local_bank_always_quarantines(moderator_client) -> None:
    local = services.banned_add_hashes(hashes={"pdq": PDQ}).bank
    response = moderator_client.post(
        f"/admin/moderation/bank/{local.pk}/change/",
        {"description": "", "source": "manual", "action": "allow"},
    )
    assert response.status_code == 200 and b"always quarantines" in response.content
    local.refresh_from_db()
    assert local.action == Bank.Act.QUARANTINE
