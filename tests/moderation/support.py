"""What the admin, view and browser tests share: users, uploads made as workers make
them, and the admin's URLs."""

import io
from pathlib import Path

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.test import Client
from PIL import Image

from moderation import blocklist, services
from moderation.models import BlocklistChange, Category, Match, Upload
from tests.images import encode
from tests.images import photo as fixture_photo

BAN_URL = "/admin/moderation/bannedfingerprint/add/"
BANNED_LIST_URL = "/admin/moderation/bannedfingerprint/"
UPLOAD_LIST_URL = "/admin/moderation/upload/"
REVIEW_URL = "/admin/moderation/upload/review/"

MODERATOR_PERMISSIONS = (
    "view_upload",
    "review_upload",
    "view_match",
    "view_auditevent",
    "view_bannedfingerprint",
    "add_bannedfingerprint",
    "change_bannedfingerprint",
    "delete_bannedfingerprint",
    "view_bank",
    "change_bank",
)
PASSWORD = "correct horse battery"
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


# --- images -------------------------------------------------------------------------


def photo(name: str, image_format: str = "JPEG") -> bytes:
    options = {"quality": 90} if image_format == "JPEG" else {}
    return encode(fixture_photo(name), image_format, **options)


def re_upload(name: str) -> bytes:
    """The banned photo as it comes back: smaller and recompressed, so not the same bytes."""
    image = fixture_photo(name)
    return encode(image.resize((image.width * 3 // 4, image.height * 3 // 4)), "JPEG", quality=75)


def animation(*names: str) -> bytes:
    frames = [fixture_photo(name).resize((240, 180)) for name in names]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


# --- fixtures and helpers -------------------------------------------------------------


def make_user(username: str, *codenames: str, staff: bool = True) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=staff)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="moderation", codename__in=codenames)
    )
    return user


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def blocklist_version() -> str:
    """Changes whenever the banned fingerprints change, telling every worker to rebuild
    or to apply the change: the version and the newest change."""
    newest = BlocklistChange.objects.order_by("-id").values_list("id", flat=True).first()
    return f"{blocklist.current_version()}:{newest}"


def add_upload(stores: Path, name: str, data: bytes) -> Upload:
    """Drop a file into the media tree and run it through the pipeline, as a worker would."""
    path = stores / "media" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    upload, created = services.upload_register(path=path)
    assert created
    services.upload_process(upload_id=upload.pk)
    upload.refresh_from_db()
    return upload


def quarantined_upload(stores: Path) -> Upload:
    """users/7/holiday.jpg: a smaller copy of the banned astronaut photo, quarantined."""
    services.banned_add_image(data=photo("astronaut"), category=Category.SCAM, reason="Known scam")
    upload = add_upload(stores, "users/7/holiday.jpg", re_upload("astronaut"))
    assert upload.state == Upload.State.QUARANTINED
    return upload


def image_url(kind: str, pk: int, *, thumb: bool = False) -> str:
    return f"/files/{kind}/{pk}/" + ("?size=thumb" if thumb else "")


def run_action(client: Client, url: str, action: str, ids: list[int], **extra: object):
    data = {"action": action, ACTION_CHECKBOX_NAME: ids, "index": 0, **extra}
    if url == UPLOAD_LIST_URL:
        # Each row of the uploads list sends back the state the page showed it in.
        for upload in Upload.objects.filter(pk__in=ids):
            data.setdefault(f"seen-{upload.pk}", upload.seen())
    return client.post(url, data, follow=True)


def distances_shown(match: Match) -> str:
    """Distances as a moderator reads them: each algorithm with its Hamming distance."""
    return ", ".join(f"{name} {value}" for name, value in sorted(match.distances.items()))


def decode_jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "JPEG"
    return image


# --- banning ----------------------------------------------------------------------------


def decision(upload: Upload, choice: str) -> dict[str, object]:
    """A review queue's form for ``upload``, as a page loaded now shows it."""
    current = Upload.objects.get(pk=upload.pk)
    return {"upload": current.pk, "decision": choice, "seen": current.seen()}
