"""The HTTP API over real HTTP (a live server), with tokens and scopes, on PostgreSQL."""

import hashlib
import io
import random
import re
from pathlib import Path

import pytest
import requests
from celery import current_app
from django.core.management import call_command
from django.urls import get_resolver
from openapi_spec_validator import validate
from PIL import Image

from moderation import api, services
from moderation.models import ApiToken, AuditEvent, Bank, BannedFingerprint, Upload
from tests.images import encode, photo
from tests.moderation.processes import wait_for
from tests.moderation.support import PDQ

pytestmark = pytest.mark.django_db(transaction=True)


def near(code: str, bits: int) -> str:
    """``code`` with its first ``bits`` bits flipped."""
    value = int(code, 16) ^ ((1 << bits) - 1) << (len(code) * 4 - bits)
    return f"{value:0{len(code)}x}"


class Client:
    def __init__(self, base: str, secret: str = "") -> None:
        self.base, self.secret = base, secret

    def __call__(self, method: str, path: str, **kwargs: object) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        return requests.request(method, self.base + path, headers=headers, timeout=60, **kwargs)


@pytest.fixture
def lookup(live_server) -> Client:
    _, secret = services.apitoken_create(name="site", scope="lookup", actor=None)
    return Client(live_server.url, secret)


@pytest.fixture
def writer(live_server) -> Client:
    _, secret = services.apitoken_create(name="feeder", scope="write", actor=None)
    return Client(live_server.url, secret)


@pytest.fixture
def partner() -> int:
    services.bank_import(lines=[f"pdq {PDQ}\n"], bank="partner")
    return BannedFingerprint.objects.get(pdq=PDQ).pk


def test_requests_without_a_live_token_are_refused(live_server, lookup: Client) -> None:
    anonymous = Client(live_server.url)
    response = anonymous("GET", f"/m/lookup?signal_type=pdq&signal={PDQ}")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["error"]
    assert Client(live_server.url, "hg_wrong")("GET", "/c/banks").status_code == 401
    assert lookup("GET", "/c/banks").status_code == 200

    token = ApiToken.objects.get(name="site")
    assert services.apitoken_revoke(token_ids=[token.pk], actor=None) == 1
    assert lookup("GET", "/c/banks").status_code == 401
    assert AuditEvent.objects.filter(action="token_revoked", detail="token site").exists()


def test_a_lookup_token_may_not_write(lookup: Client, partner: int) -> None:
    response = lookup("POST", "/c/bank/partner/signal", json={"pdq": near(PDQ, 40)})
    assert response.status_code == 403 and "may not write" in response.json()["error"]


def test_a_hash_is_looked_up_as_hma_answers(lookup: Client, partner: int) -> None:
    exact = lookup("GET", "/m/lookup", params={"signal_type": "pdq", "signal": PDQ})
    assert exact.status_code == 200
    assert exact.json() == {"partner": [{"bank_content_id": partner, "distance": "0"}]}
    close = lookup("GET", "/m/lookup", params={"signal_type": "pdq", "signal": near(PDQ, 9)})
    assert close.json() == {"partner": [{"bank_content_id": partner, "distance": "9"}]}
    far = lookup("GET", "/m/lookup", params={"signal_type": "pdq", "signal": near(PDQ, 90)})
    assert far.json() == {}
    other = lookup("GET", "/m/lookup", params={"signal_type": "pdq", "signal": PDQ, "banks": "x"})
    assert other.json() == {}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"signal_type": "pdq", "signal": "abc"}, "has 3 hex digits"),
        ({"signal_type": "pdq", "signal": "z" * 64}, "not hex digits"),
        ({"signal_type": "video_md5", "signal": "0" * 32}, "Unknown signal type"),
        ({"signal": PDQ}, "Give signal_type"),
    ],
)
def test_malformed_lookups_are_400_with_the_reason(lookup: Client, params, message) -> None:
    response = lookup("GET", "/m/lookup", params=params)
    assert response.status_code == 400 and message in response.json()["error"]


def test_an_md5_is_looked_up_by_equality(lookup: Client) -> None:
    digest = hashlib.md5(b"banned file").hexdigest()
    services.bank_import(lines=[f"md5 {digest}\n"], bank="partner")
    found = lookup("GET", "/m/lookup", params={"signal_type": "md5", "signal": digest.upper()})
    assert list(found.json()) == ["partner"]


def test_an_image_gets_the_workers_whole_decision_and_nothing_is_stored(
    stores: Path, lookup: Client
) -> None:
    [banned] = services.banned_add_image(data=encode(photo("coffee"), "JPEG"), category="scam")
    mirrored = photo("coffee").transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((300, 200))
    response = lookup("POST", "/m/lookup", files={"photo": encode(mirrored, "JPEG")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decision"] == "quarantine"
    [match] = body["matches"]
    assert (match["bank"], match["bank_content_id"], match["variant"]) == (
        "local",
        banned.pk,
        "mirrored",
    )
    assert match["explanation"].startswith("by hash (") and not match["voided"]
    assert len(body["hashes"]["pdq"]) == 64
    clean = lookup("POST", "/m/lookup", files={"photo": encode(photo("rocket"), "PNG")})
    assert clean.json()["decision"] == "clean" and clean.json()["matches"] == []
    assert not Upload.objects.exists()


def test_hostile_images_are_refused_with_400(stores: Path, lookup: Client) -> None:
    disguised = lookup("POST", "/m/lookup", files={"photo": ("a.jpg", b"<html>hi</html>")})
    assert disguised.status_code == 400 and "unsupported_format" in disguised.json()["error"]
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")
    refused = lookup("POST", "/h/hash", files={"photo": bomb.getvalue()})
    assert refused.status_code == 400 and "decompression_bomb" in refused.json()["error"]
    missing = lookup("POST", "/h/hash", data={"photograph": "x"})
    assert missing.status_code == 400 and "'photo'" in missing.json()["error"]


def test_an_image_is_hashed_as_a_ban_hashes_it(stores: Path, lookup: Client) -> None:
    data = encode(photo("chelsea"), "JPEG")
    [banned] = services.banned_add_image(data=data)
    response = lookup("POST", "/h/hash", files={"photo": data})
    assert response.json() == {
        "pdq": banned.pdq,
        "phash": banned.phash,
        "dhash": banned.dhash,
        "pdq_quality": banned.pdq_quality,
    }


def test_banks_are_listed(lookup: Client, partner: int) -> None:
    banks = lookup("GET", "/c/banks").json()
    assert [bank["name"] for bank in banks] == ["partner"]
    assert banks[0]["matching_enabled_ratio"] == 1.0 and banks[0]["fingerprints"] == 1
    assert lookup("GET", "/c/bank/partner").json()["action"] == "quarantine"
    assert lookup("GET", "/c/bank/nope").status_code == 404


def test_a_hash_added_through_the_api_is_banned_at_once_and_audited(
    writer: Client, partner: int
) -> None:
    added = near(PDQ, 100)
    response = writer("POST", "/c/bank/partner/signal", json={"pdq": added})
    assert response.status_code == 201, response.text
    row = BannedFingerprint.objects.get(pk=response.json()["id"])
    assert (row.bank.name, row.source, row.pdq) == ("partner", "api", added)
    event = AuditEvent.objects.get(action="ban_added", fingerprint=row)
    assert "token feeder" in event.detail
    found = writer("GET", "/m/lookup", params={"signal_type": "pdq", "signal": added})
    assert found.json() == {"partner": [{"bank_content_id": row.pk, "distance": "0"}]}
    again = writer("POST", "/c/bank/partner/signal", json={"pdq": added})
    assert again.status_code == 200 and again.json()["id"] == row.pk


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"pdq": "12"}, 400, "hex digits"),
        ({"pdq": "0" * 64}, 400, "too plain"),
        ({"pdq": PDQ, "md5": "0" * 32}, 400, "one signal type"),
        ({"pdq": PDQ, "quality": 200}, 400, "quality"),
        ([PDQ], 400, "JSON object"),
    ],
)
def test_bad_signals_are_refused(writer: Client, partner: int, body, status, message) -> None:
    response = writer("POST", "/c/bank/partner/signal", json=body)
    assert response.status_code == status and message in response.json()["error"]


def test_a_signal_for_a_bank_that_does_not_exist_is_404(writer: Client) -> None:
    response = writer("POST", "/c/bank/nope/signal", json={"pdq": PDQ})
    assert response.status_code == 404


def test_the_api_adds_nothing_to_the_local_bank_or_an_allow_bank(writer: Client) -> None:
    services.banned_add_hashes(hashes={"pdq": PDQ})
    services.bank_save(bank=Bank(name="site-art", action="allow"), changed=None, actor=None)
    for bank in ("local", "site-art"):
        response = writer("POST", f"/c/bank/{bank}/signal", json={"pdq": near(PDQ, 100)})
        assert response.status_code == 403 and "moderators only" in response.json()["error"]
    assert BannedFingerprint.objects.count() == 1


def test_a_deactivated_hash_added_again_is_banned_again(writer: Client, partner: int) -> None:
    services.banned_set_active(fingerprint_ids=[partner], active=False, actor=None)
    response = writer("POST", "/c/bank/partner/signal", json={"pdq": PDQ})
    assert response.status_code == 200 and response.json()["id"] == partner
    assert BannedFingerprint.objects.get(pk=partner).active
    assert AuditEvent.objects.filter(action="ban_activated", detail__contains="feeder").exists()


def test_status_says_what_is_down(live_server) -> None:
    services.banned_add_hashes(hashes={"pdq": PDQ})  # a new blocklist, not yet loaded
    loading = requests.get(live_server.url + "/status", timeout=30)
    assert loading.status_code == 503 or loading.json()["blocklist"]["current"]

    def ready() -> requests.Response | None:
        response = requests.get(live_server.url + "/status", timeout=30)
        return response if response.status_code == 200 else None

    status = wait_for(ready, timeout=60, what="the blocklist loaded in the background")
    assert status.json()["status"] == "ok" and status.json()["blocklist"]["fingerprints"] == 1
    original = current_app.conf.broker_write_url
    current_app.conf.broker_write_url = "redis://127.0.0.1:9/0"  # where uploads are sent
    api._broker = (float("-inf"), None)  # asked again at once, not in a few seconds
    try:
        down = requests.get(live_server.url + "/status", timeout=30)
    finally:
        current_app.conf.broker_write_url = original
        api._broker = (float("-inf"), None)
    assert down.status_code == 503
    assert down.json()["problems"] == ["the task queue's broker is unavailable"]


def test_the_openapi_description_is_valid_and_covers_every_route(live_server) -> None:
    schema = requests.get(live_server.url + "/api/schema/", timeout=30).json()
    validate(schema)
    routes = {
        "/" + str(pattern.pattern).replace("<slug:name>", "{name}")
        for pattern in get_resolver().url_patterns
        if getattr(pattern, "name", None)
        and (pattern.name.startswith("api-") or pattern.name == "metrics")
    }
    assert routes == set(schema["paths"])


def test_metrics_need_a_token_or_an_allowed_address(
    stores: Path, live_server, lookup: Client, partner: int, settings
) -> None:
    lookup("GET", "/m/lookup", params={"signal_type": "pdq", "signal": PDQ})
    lookup("GET", "/m/lookup", params={"signal_type": "pdq", "signal": "12"})
    assert requests.get(live_server.url + "/metrics", timeout=30).status_code == 401
    text = lookup("GET", "/metrics").text
    assert 'hashguard_lookups_total{kind="hash",result="match"} 1' in text
    assert 'hashguard_lookups_total{kind="hash",result="bad_request"} 1' in text
    assert (
        'hashguard_blocklist_fingerprints{action="quarantine",bank="partner",enabled="true"} 1'
        in text
    )
    assert (
        "hashguard_decision_seconds_bucket" in text and 'hashguard_uploads{state="clean"}' in text
    )
    # The process that answers holds the current blocklist, and says so.
    assert re.search(r'^hashguard_blocklist_current\{process="[^"]+"\} 1$', text, re.M)
    settings.HASHGUARD_METRICS_ALLOW = ["127.0.0.0/8"]
    assert requests.get(live_server.url + "/metrics", timeout=30).status_code == 200
    # Through a proxy every request comes from its address: those need a token.
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    assert (
        requests.get(live_server.url + "/metrics", headers=proxied, timeout=30).status_code == 401
    )


def test_decisions_are_counted_with_their_latency(stores: Path, lookup: Client) -> None:
    services.banned_add_image(data=encode(photo("coffee"), "JPEG"))
    for name, picture in (("a.jpg", "coffee"), ("b.jpg", "rocket")):
        path = stores / "media" / name
        path.write_bytes(encode(photo(picture), "JPEG"))
        upload, _ = services.upload_register(path=path)
        services.upload_process(upload_id=upload.pk)
    text = lookup("GET", "/metrics").text
    assert 'hashguard_decisions_total{state="quarantined"} 1' in text
    assert 'hashguard_decisions_total{state="clean"} 1' in text
    assert "hashguard_decision_seconds_count 2" in text
    assert 'hashguard_decision_seconds_bucket{le="+Inf"} 2' in text


def test_the_command_makes_a_token_that_works(live_server, capsys) -> None:
    call_command("apitoken", "create", "mobile-app", "--scope", "write")
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("hg_")
    token = ApiToken.objects.get(name="mobile-app")
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(list(ApiToken.objects.values()))
    assert Client(live_server.url, secret)("GET", "/c/banks").status_code == 200
    call_command("apitoken", "revoke", "mobile-app")
    assert Client(live_server.url, secret)("GET", "/c/banks").status_code == 401


def test_moderators_make_a_token_in_the_admin_and_see_it_once(admin_client, live_server) -> None:
    page = admin_client.post(
        "/admin/moderation/apitoken/add/", {"name": "partner-site", "scope": "lookup"}
    )
    assert page.status_code == 200
    secret = page.context["secret"]
    assert secret.encode() in page.content and "no-store" in page["Cache-Control"]
    assert Client(live_server.url, secret)("GET", "/c/banks").status_code == 200
    listed = admin_client.get("/admin/moderation/apitoken/")
    assert b"partner-site" in listed.content and secret.encode() not in listed.content
    twice = admin_client.post(
        "/admin/moderation/apitoken/add/", {"name": "partner-site", "scope": "lookup"}
    )
    assert b"A token of that name exists" in twice.content


def test_lookups_are_exact_among_many_hashes(lookup: Client) -> None:
    """Lookups are exact: of 2,000 hashes, those within the rule's PDQ limit of the query
    and no others are returned."""
    rng = random.Random(7)
    lines = [f"pdq {rng.randbytes(32).hex()}\n" for _ in range(2000)]
    query = lines[5].split()[1]
    lines += [f"pdq {near(query, bits)}\n" for bits in (3, 31, 32, 60)]
    services.bank_import(lines=lines, bank="big")
    found = lookup("GET", "/m/lookup", params={"signal_type": "pdq", "signal": query}).json()
    assert sorted(int(hit["distance"]) for hit in found["big"]) == [0, 3, 31]


def test_a_hash_in_an_allow_bank_voids_the_other_matches(lookup: Client, partner: int) -> None:
    services.bank_import(lines=[f"pdq {near(PDQ, 2)}\n"], bank="site-art")
    bank = Bank.objects.get(name="site-art")
    bank.action = Bank.Act.ALLOW
    services.bank_save(bank=bank, changed=["action"], actor=None)
    query = {"signal_type": "pdq", "signal": PDQ}
    assert lookup("GET", "/m/lookup", params=query).json() == {}
    named = lookup("GET", "/m/lookup", params={**query, "banks": "site-art,partner"}).json()
    assert list(named) == ["site-art"] and named["site-art"][0]["distance"] == "2"
