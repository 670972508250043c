"""The HTTP API for other services, on HMA 2.0's OpenMediaMatch routes, with tokens.

Every route but ``/status`` and ``/api/schema/`` needs ``Authorization: Bearer <token>``
(``manage.py apitoken create``): 401 without a live token, 403 without the scope. Errors
are ``{"error": "<what is wrong>"}``. The routes and their answers: moderation/openapi.py.
"""

import ipaddress
import json
import logging
import time
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from hashes.errors import ImageError
from hashes.hashlists import KINDS
from moderation import metrics, openapi, selectors, services
from moderation.blocklist import current_version, held_blocklist, load_in_background
from moderation.models import ApiToken, Bank, Upload
from moderation.tasks import broker_problem, waiting_in_queue

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def token_required(scope: str) -> Callable[[View], View]:
    """Let the request through with a live token allowed ``scope``; 401 or 403 otherwise."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            kind, _, secret = request.headers.get("Authorization", "").partition(" ")
            if kind.lower() != "bearer" or not secret.strip():
                return _error(
                    401,
                    "Send an API token: 'Authorization: Bearer <token>' "
                    "(manage.py apitoken create NAME).",
                    WWW_Authenticate="Bearer",
                )
            token = services.apitoken_authenticate(secret=secret.strip())
            if token is None:
                return _error(
                    401, "This API token is unknown or revoked.", WWW_Authenticate="Bearer"
                )
            if not token.allows(scope):
                return _error(
                    403, f"Token {token.name} may not {scope}; it has scope {token.scope}."
                )
            request.api_token = token  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return csrf_exempt(wrapped)

    return decorate


def _photo(request: HttpRequest) -> bytes | JsonResponse:
    """The uploaded ``photo``'s bytes, or the error to answer with."""
    upload: UploadedFile | None = request.FILES.get("photo")
    if upload is None:
        return _error(400, "Send the image as a multipart form field named 'photo'.")
    limit = settings.HASHGUARD_MAX_BYTES
    if upload.size is not None and upload.size > limit:
        return _error(400, f"The image is over the {limit}-byte limit (HASHGUARD_MAX_BYTES).")
    return upload.read(limit + 1)


_DECISIONS = {
    Upload.State.QUARANTINED: "quarantine",
    Upload.State.REVIEW: "review",
    Upload.State.CLEAN: "clean",
}


@require_http_methods(["GET", "POST"])
@token_required(ApiToken.Scope.LOOKUP)
def lookup(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _lookup_image(request)
    signal_type = request.GET.get("signal_type", "")
    signal = request.GET.get("signal", "")
    if not signal_type or not signal:
        metrics.LOOKUPS.inc(kind="hash", result="bad_request")
        return _error(
            400, "Give signal_type (pdq, phash, dhash, md5, sha256) and signal, or POST a photo."
        )
    names = request.GET.get("banks")
    banks = {name.strip() for name in names.split(",") if name.strip()} if names else None
    try:
        found = services.lookup_signal(signal_type=signal_type, signal=signal, banks=banks)
    except ValueError as exc:
        metrics.LOOKUPS.inc(kind="hash", result="bad_request")
        return _error(400, str(exc))
    metrics.LOOKUPS.inc(kind="hash", result="match" if found else "no_match")
    return JsonResponse(found)


def _lookup_image(request: HttpRequest) -> HttpResponse:
    data = _photo(request)
    if isinstance(data, JsonResponse):
        metrics.LOOKUPS.inc(kind="image", result="bad_request")
        return data
    try:
        result = services.lookup_image(data=data)
    except ImageError as exc:
        metrics.LOOKUPS.inc(kind="image", result="bad_request")
        return _error(400, f"This image cannot be checked ({exc.code}): {exc}")
    decision = _DECISIONS[result.verdict.state]  # type: ignore[index]
    metrics.LOOKUPS.inc(kind="image", result=decision)
    return JsonResponse({"decision": decision, "hashes": result.hashes, "matches": result.matches})


@require_POST
@token_required(ApiToken.Scope.LOOKUP)
def hash_photo(request: HttpRequest) -> HttpResponse:
    data = _photo(request)
    if isinstance(data, JsonResponse):
        return data
    try:
        return JsonResponse(services.hash_image(data=data))
    except ImageError as exc:
        return _error(400, f"This image cannot be hashed ({exc.code}): {exc}")


def _bank_json(bank: Bank, count: int) -> dict[str, object]:
    return {
        "name": bank.name,
        "matching_enabled_ratio": 1.0 if bank.enabled else 0.0,
        "enabled": bank.enabled,
        "description": bank.description,
        "source": bank.source,
        "action": bank.action,
        "limits": dict(bank.limits()),
        "fingerprints": count,
    }


@require_GET
@token_required(ApiToken.Scope.LOOKUP)
def banks(request: HttpRequest) -> HttpResponse:
    return JsonResponse(
        [_bank_json(bank, count) for bank, count in selectors.banks_with_counts()], safe=False
    )


@require_GET
@token_required(ApiToken.Scope.LOOKUP)
def bank(request: HttpRequest, name: str) -> HttpResponse:
    found = [item for item in selectors.banks_with_counts(name=name)]
    if not found:
        return _error(404, f"There is no bank named {name!r}.")
    return JsonResponse(_bank_json(*found[0]))


@require_POST
@token_required(ApiToken.Scope.WRITE)
def bank_signal(request: HttpRequest, name: str) -> HttpResponse:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return _error(400, 'Send a JSON object such as {"pdq": "<64 hex digits>"}.')
    if not isinstance(body, dict):
        return _error(400, 'Send a JSON object such as {"pdq": "<64 hex digits>"}.')
    quality = body.pop("quality", None)
    if quality is not None and (type(quality) is not int or not 0 <= quality <= 100):
        return _error(400, "quality must be a whole number from 0 to 100.")
    if len(body) != 1 or not isinstance(next(iter(body.values())), str):
        return _error(
            400,
            'Send one signal type and its hash, such as {"pdq": "<64 hex digits>"} '
            "(pdq, phash, dhash, md5 or sha256), and optionally quality.",
        )
    [(signal_type, signal)] = body.items()
    try:
        row, created = services.bank_add_signal(
            bank=name,
            signal_type=signal_type,
            signal=signal,
            quality=quality,
            token=request.api_token,  # type: ignore[attr-defined]
        )
    except Bank.DoesNotExist:
        return _error(404, f"There is no bank named {name!r}; make it in the admin first.")
    except services.ActionRefused as exc:
        return _error(403, str(exc))
    except ValueError as exc:
        return _error(400, str(exc))
    kind = next(kind for kind in KINDS if getattr(row, kind))
    return JsonResponse(
        {"id": row.pk, "signals": {kind: getattr(row, kind)}, "created": created},
        status=201 if created else 200,
    )


_BROKER_CHECKED_EVERY = 5.0
_broker: tuple[float, str | None] = (-_BROKER_CHECKED_EVERY, None)


def _broker_problem() -> str | None:
    """broker_problem, asked at most every few seconds: a health check polled often must
    not hold a web process for the broker's time-out each time."""
    global _broker
    at, problem = _broker
    if time.monotonic() - at >= _BROKER_CHECKED_EVERY:
        problem = broker_problem()
        _broker = (time.monotonic(), problem)
    return problem


@require_GET
def status(request: HttpRequest) -> HttpResponse:
    """200 when the database answers, the broker is reachable and this process holds the
    current blocklist; 503 with the reasons otherwise (loading the blocklist starts, in
    the background, when it is missing or old). No token: the reasons say what is down,
    not why; the logs say why."""
    problems = []
    body: dict[str, object] = {}
    try:
        version = current_version()
    except DatabaseError:
        logger.exception("status: the database is unavailable")
        problems.append("the database is unavailable")
    else:
        held = held_blocklist()
        if held is None or held.version != version:
            load_in_background()
            problems.append("the blocklist is loading")
        if held is not None:
            body["blocklist"] = {
                "version": held.version,
                "current": held.version == version,
                "fingerprints": len(held.detector),
                "age_seconds": round(time.time() - held.built_at, 1),
            }
    if _broker_problem():
        problems.append("the task queue's broker is unavailable")
    body["status"] = "unavailable" if problems else "ok"
    body["problems"] = problems
    response = JsonResponse(body, status=503 if problems else 200)
    # An expected answer while loading, not a server error for django.request to log.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


@require_GET
def schema(request: HttpRequest) -> HttpResponse:
    return JsonResponse(openapi.SCHEMA)


def _render_metrics(request: HttpRequest) -> HttpResponse:
    text = metrics.render(waiting_in_queue=waiting_in_queue())
    return HttpResponse(text, content_type="text/plain; version=0.0.4; charset=utf-8")


_metrics_with_token = token_required(ApiToken.Scope.LOOKUP)(_render_metrics)


@require_GET
def prometheus(request: HttpRequest) -> HttpResponse:
    """Metrics for Prometheus: to the addresses HASHGUARD_METRICS_ALLOW lists, when they
    connect directly, or with a token."""
    address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "0.0.0.0")
    # Through the proxy every request comes from its address: the list is for scrapers
    # that connect directly, so a forwarded request needs a token.
    forwarded = "X-Forwarded-For" in request.headers
    if not forwarded and any(address in network for network in metrics_networks()):
        return _render_metrics(request)
    return _metrics_with_token(request)


def metrics_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(text, strict=False) for text in settings.HASHGUARD_METRICS_ALLOW]
