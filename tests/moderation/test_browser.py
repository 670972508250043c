"""The admin's key flows in a real browser: ban an image, then review and release an upload."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import Page, sync_playwright

from config.celery import app as celery_app
from moderation.models import BannedFingerprint, Upload
from tests.moderation.support import (
    MODERATOR_PERMISSIONS,
    PASSWORD,
    add_upload,
    make_user,
    photo,
    quarantined_upload,
    re_upload,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/review-queue.png")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is not installed; the project's test script installs it",
    ),
]


@pytest.fixture
def page(live_server, monkeypatch) -> Iterator[Page]:
    # Playwright's sync API runs an event loop in this thread, and Django refuses ORM calls
    # from a thread with a running loop unless told that the caller is synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)
        yield page
        browser.close()
        # Inside sync_playwright the test's code runs in a context of its own, with its own
        # database connection; close it here, or the test database cannot be dropped.
        connections.close_all()


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    # Outside a test transaction the on-commit hook does queue the upload: run the real
    # task in this process rather than leave a message in the project's broker.
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


def log_in(page: Page, base_url: str) -> None:
    make_user("moderator", *MODERATOR_PERMISSIONS)
    page.goto(f"{base_url}/admin/login/")
    page.fill("input[name=username]", "moderator")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")


def images_loaded(page: Page, selector: str) -> list[int]:
    """naturalWidth of each image, once the browser has finished loading them all."""
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(img => img.complete)", arg=selector
    )
    return page.eval_on_selector_all(selector, "imgs => imgs.map(img => img.naturalWidth)")


def test_moderator_bans_an_image_then_releases_a_quarantined_upload(
    transactional_db, live_server, stores, eager_tasks, page, tmp_path
):
    log_in(page, live_server.url)

    banned_file = tmp_path / "banned.jpg"
    banned_file.write_bytes(photo("rocket"))
    page.goto(f"{live_server.url}/admin/moderation/bannedfingerprint/add/")
    page.set_input_files("input[name=image]", str(banned_file))
    page.select_option("select[name=category]", "scam")
    page.fill("textarea[name=reason]", "Fake giveaway")
    page.click("input[type=submit][value=Ban]")

    success = page.locator(".messagelist .success")
    assert "every worker uses it from the next file on" in success.inner_text()
    banned = BannedFingerprint.objects.get()
    assert (banned.category, banned.reason) == ("scam", "Fake giveaway")
    assert (stores / "references" / banned.reference_name).exists()
    assert images_loaded(page, "#result_list img")[0] > 0

    upload = quarantined_upload(stores)
    add_upload(stores, "users/2/rocket-copy.jpg", re_upload("rocket"))
    assert Upload.objects.filter(state=Upload.State.QUARANTINED).count() == 2

    page.goto(f"{live_server.url}/admin/moderation/upload/review/")
    item = page.locator(f"#upload-{upload.pk}")
    assert "2 uploads waiting for review" in page.inner_text("#content")
    widths = images_loaded(page, f"#upload-{upload.pk} img")
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert len(widths) == 2 and all(width > 0 for width in widths), widths
    match = upload.matches.get()
    shown = ", ".join(f"{name} {value}" for name, value in sorted(match.distances.items()))
    assert item.locator(".match-distances").inner_text() == shown
    assert item.locator(".match-rule").inner_text() == match.rule
    upload_box = item.locator(".review-upload img").bounding_box()
    reference_box = item.locator(".review-match img").bounding_box()
    assert reference_box["x"] > upload_box["x"] + upload_box["width"], "side by side"
    assert abs(reference_box["y"] - upload_box["y"]) < 5

    item.locator("button[value=release]").click()

    assert "1 upload(s) released." in page.locator(".messagelist .success").inner_text()
    assert page.locator(f"#upload-{upload.pk}").count() == 0
    assert "1 upload waiting for review" in page.inner_text("#content")
    upload.refresh_from_db()
    assert upload.state == Upload.State.RELEASED
    assert (stores / "media" / upload.path).read_bytes() == re_upload("astronaut")
    assert not any((stores / "quarantine").rglob("holiday.jpg"))
