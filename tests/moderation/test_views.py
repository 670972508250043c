"""The protected image view: who may see which image, and what it sends back."""

import os

import pytest
from django.test import Client
from pytest_django.asserts import assertNotContains

from moderation import services
from moderation.models import Upload
from tests.images import photo as fixture_photo
from tests.moderation.support import (
    PASSWORD,
    PDQ,
    UPLOAD_LIST_URL,
    add_upload,
    client_for,
    decision,
    decode_jpeg,
    image_url,
    make_user,
    photo,
    quarantined_upload,
)

pytestmark = pytest.mark.django_db

HOSTILE = b"<html><body><script>alert(document.cookie)</script></body></html>"


def test_images_need_the_permission_for_their_kind(stores):
    upload = quarantined_upload(stores)
    clean = add_upload(stores, "users/8/cat.jpg", photo("coffee"))
    reference = upload.matches.get().fingerprint_id
    nothing = client_for(make_user("nothing"))
    uploads_only = client_for(make_user("uploads", "view_upload"))
    references_only = client_for(make_user("references", "view_bannedfingerprint"))
    reviewer = client_for(make_user("reviewer", "review_upload"))

    assert nothing.get(image_url("upload", clean.pk)).status_code == 403
    assert nothing.get(image_url("reference", reference)).status_code == 403
    assert uploads_only.get(image_url("reference", reference)).status_code == 403
    assert references_only.get(image_url("upload", clean.pk)).status_code == 403
    assert references_only.get(image_url("reference", reference)).status_code == 200
    assert reviewer.get(image_url("reference", reference)).status_code == 200
    assert reviewer.get(image_url("upload", upload.pk)).status_code == 200


def test_images_are_reencoded_as_jpeg_with_protective_headers(stores, moderator_client):
    upload = add_upload(stores, "users/8/cat.png", photo("coffee", "PNG"))

    response = moderator_client.get(image_url("upload", upload.pk))

    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "default-src 'none'"
    assert "no-store" in response["Cache-Control"]
    assert decode_jpeg(response.content).size == fixture_photo("coffee").size


def test_a_disguised_file_is_never_served(stores, moderator_client):
    upload = add_upload(stores, "users/6/x.jpg", HOSTILE)
    assert (upload.state, upload.error_code) == (Upload.State.NOT_IMAGE, "unsupported_format")
    # One the workers have not looked at yet is still in the media tree, as it came.
    path = stores / "media" / "users/6/y.jpg"
    path.write_bytes(HOSTILE)
    pending, _ = services.upload_register(path=path)

    response = moderator_client.get(UPLOAD_LIST_URL)
    assertNotContains(response, image_url("upload", upload.pk, thumb=True))
    assertNotContains(response, image_url("upload", pending.pk, thumb=True))

    for pk in (upload.pk, pending.pk):
        for url in (image_url("upload", pk), image_url("upload", pk, thumb=True)):
            response = moderator_client.get(url)
            assert response.status_code == 404
            assert b"<script>" not in response.content
            assert response["Content-Type"] != "image/jpeg"


def test_a_file_replaced_by_a_symlink_is_not_followed(stores, moderator_client):
    upload = add_upload(stores, "users/8/cat.jpg", photo("coffee"))
    secret = stores / "secret.jpg"
    secret.write_bytes(photo("chelsea"))
    target = stores / "media" / upload.path
    target.unlink()
    os.symlink(secret, target)

    assert moderator_client.get(image_url("upload", upload.pk)).status_code == 404


def test_a_released_upload_is_visible_without_the_review_permission(stores, moderator_client):
    upload = quarantined_upload(stores)
    viewer = client_for(make_user("viewer", "view_upload"))
    assert viewer.get(image_url("upload", upload.pk)).status_code == 403

    moderator_client.post(
        "/admin/moderation/upload/review/", decision(upload, "release")
    )

    response = viewer.get(image_url("upload", upload.pk))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"


def test_unknown_image_kinds_and_ids_are_not_found(stores, moderator_client):
    [pasted] = [services.banned_add_hashes(hashes={"pdq": PDQ})]

    assert moderator_client.get("/files/media/1/").status_code == 404
    assert moderator_client.get(image_url("upload", 999_999)).status_code == 404
    assert moderator_client.get(image_url("reference", pasted.pk)).status_code == 404
    assert moderator_client.post(image_url("reference", pasted.pk)).status_code == 405


def test_logins_are_throttled(client: Client) -> None:
    make_user("moderator", "view_upload")
    url = "/admin/login/?next=/admin/"
    statuses = [
        client.post(url, {"username": "moderator", "password": "wrong"}).status_code
        for _ in range(5)
    ]
    assert statuses == [200, 200, 200, 200, 429]  # the fifth failure locks the pair out
    locked = client.post(url, {"username": "moderator", "password": PASSWORD})
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another user name from the same address is not locked out with it.
    make_user("colleague", "view_upload")
    other = client.post(url, {"username": "colleague", "password": PASSWORD})
    assert other.status_code == 302 and client.session["_auth_user_id"]


def test_a_media_directory_swapped_for_a_symlink_serves_nothing(stores):
    """A staff user without review rights must not reach quarantined images through a
    clean upload whose directory now leads into quarantine."""
    quarantined = quarantined_upload(stores)  # users/7/holiday.jpg, now in quarantine
    clean = add_upload(stores, "users/9/x.jpg", photo("coffee"))
    media = stores / "media"
    os.rename(media / "users" / "9", stores / "old-9")
    (media / "users" / "9").symlink_to(stores / "quarantine" / str(quarantined.pk))
    os.link(
        stores / "quarantine" / quarantined.quarantine_name,
        stores / "quarantine" / str(quarantined.pk) / "x.jpg",
    )
    uploads_only = client_for(make_user("uploads", "view_upload"))

    response = uploads_only.get(image_url("upload", clean.pk))

    assert response.status_code == 404
    assert response["Content-Type"] != "image/jpeg"
