"""The admin's key flows in a real browser: ban an image, then review and release an upload."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import Browser, Page, sync_playwright

from config.celery import app as celery_app
from moderation import services
from moderation.models import BannedFingerprint, Upload
from tests.images import encode
from tests.moderation.support import (
    MODERATOR_PERMISSIONS,
    PASSWORD,
    add_upload,
    decode_jpeg,
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
def browser(live_server, monkeypatch) -> Iterator[Browser]:
    # Playwright's sync API runs an event loop in this thread, and Django refuses ORM calls
    # from a thread with a running loop unless told that the caller is synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()
        # Inside sync_playwright the test's code runs in a context of its own, with its own
        # database connection; close it here, or the test database cannot be dropped.
        connections.close_all()


def new_page(browser: Browser) -> Page:
    """A page of a browser context of its own: its own cookies, its own moderator."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    return page


@pytest.fixture
def page(browser: Browser) -> Page:
    return new_page(browser)


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    # Outside a test transaction the on-commit hook does queue the upload: run the real
    # task in this process rather than leave a message in the project's broker.
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


def log_in(page: Page, base_url: str, username: str = "moderator") -> None:
    make_user(username, *MODERATOR_PERMISSIONS)
    page.goto(f"{base_url}/admin/login/")
    page.fill("input[name=username]", username)
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
    # The engineering detail is one click away, under the plain words.
    assert item.locator(".match-distances").text_content() == shown
    assert item.locator(".match-rule").text_content() == match.rule
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


def test_two_moderators_on_one_upload_the_later_is_told_and_changes_nothing(
    transactional_db, live_server, stores, browser
):
    upload = quarantined_upload(stores)
    alice, bob = new_page(browser), new_page(browser)
    log_in(alice, live_server.url, "alice")
    log_in(bob, live_server.url, "bob")
    url = f"{live_server.url}/admin/moderation/upload/review/{upload.pk}/"
    alice.goto(url)
    bob.goto(url)

    alice.keyboard.press("c")
    alice.wait_for_url(f"{live_server.url}/admin/moderation/upload/review/")
    bob.keyboard.press("r")

    message = bob.locator("#review-message")
    message.wait_for(state="visible")
    assert "alice: quarantine confirmed at" in message.inner_text()
    upload.refresh_from_db()
    assert upload.state == Upload.State.CONFIRMED and upload.reviewed_by.username == "alice"


def test_images_are_blurred_until_a_click_reveals_one(transactional_db, live_server, stores, page):
    upload = quarantined_upload(stores)
    log_in(page, live_server.url)
    page.goto(f"{live_server.url}/admin/moderation/upload/review/")
    images_loaded(page, f"#upload-{upload.pk} img")
    first = page.locator(f"#upload-{upload.pk} img.hg-protected").first
    other = page.locator(f"#upload-{upload.pk} img.hg-protected").nth(1)
    filter_of = "img => getComputedStyle(img).filter"
    assert first.evaluate(filter_of).startswith("blur(24px)")

    first.click()

    assert first.evaluate(filter_of) == "none"
    assert other.evaluate(filter_of).startswith("blur(")  # one image, not all
    assert page.url.endswith("/admin/moderation/upload/review/")  # revealed, not opened


def test_a_moderator_reviews_twenty_uploads_with_the_keyboard(
    transactional_db, live_server, stores, page, settings
):
    settings.HASHGUARD_REVIEW_BATCH = 20
    services.banned_add_image(data=photo("astronaut"))
    for index in range(20):
        small = decode_jpeg(photo("astronaut")).resize((180 + index, 180 + index))
        add_upload(stores, f"batch/{index:02}.jpg", encode(small, "JPEG"))
    assert Upload.objects.filter(state=Upload.State.QUARANTINED).count() == 20
    log_in(page, live_server.url)
    page.goto(f"{live_server.url}/admin/moderation/upload/review/")
    page.locator(".review-open").first.click()
    page.locator("#review-keys").wait_for()
    page.evaluate("window.hgMarker = 1")  # gone if a decision reloads the page

    for position in range(1, 21):
        page.locator("#review-keys").wait_for()
        # Decided uploads leave the batch: the next is always the first of those left.
        assert f"Upload 1 of the {21 - position} held for you" in page.inner_text("#review-keys")
        before = page.url
        page.keyboard.press("v")  # revealed before deciding, as a moderator would look
        assert page.locator("#review-upload-image.hg-revealed").count() == 1
        page.keyboard.press("c" if position % 5 else "r")
        page.wait_for_url(lambda url, before=before: url != before)
        if position < 20:  # the next upload came in place, without a reload
            assert page.evaluate("window.hgMarker") == 1

    assert page.url.endswith("/admin/moderation/upload/review/")
    assert Upload.objects.filter(state=Upload.State.CONFIRMED).count() == 16
    assert Upload.objects.filter(state=Upload.State.RELEASED).count() == 4


def test_the_dashboard_shows_the_queue_and_leads_to_it(transactional_db, live_server, stores, page):
    quarantined_upload(stores)
    log_in(page, live_server.url)
    page.goto(f"{live_server.url}/admin/")
    assert "1 waiting" in page.inner_text("#hg-queue")
    assert page.locator("#hg-per-day svg rect").count() == 30
    assert page.locator("#hg-per-day svg").bounding_box()["width"] > 100
    assert "Upload quarantined" in page.inner_text("#recent-actions-module")
    page.click("text=Open the review queue")
    page.wait_for_url(f"{live_server.url}/admin/moderation/upload/review/")
    assert "1 upload waiting for review" in page.inner_text("#content")
