"""What the HTTP API does for other services: tokens, lookups, hashing, and adding hashes to
banks. The views (moderation/api.py) only parse requests and shape answers."""

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from hashes.algorithms import ALGORITHMS, Fingerprint, distinct_frames
from hashes.detect import probes
from hashes.hashlists import DIGESTS, parse_signal
from moderation.blocklist import Verdict, current_blocklist, match_rule
from moderation.models import ApiToken, Bank, BannedFingerprint
from moderation.services.banks import entry_fields, entry_refusal
from moderation.services.bans import blocklist_changed
from moderation.services.common import Action, ActionRefused, audit, load
from moderation.services.retro import retro_check_start
from moderation.services.uploads import judge

# A token's last use is written at most this often: a lookup should not cost a write.
_USE_RECORDED_EVERY = timedelta(minutes=1)
TOKEN_PREFIX = "hg_"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def apitoken_create(*, name: str, scope: str, actor: User | None) -> tuple[ApiToken, str]:
    """Make a token; returns it and its secret, which is shown this once and never kept."""
    if scope not in ApiToken.Scope.values:
        raise ValueError(f"Unknown scope {scope!r}; expected one of {', '.join(ApiToken.Scope)}.")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name, scope=scope, digest=_digest(secret), prefix=secret[:10], created_by=actor
    )
    with transaction.atomic():
        token.full_clean()
        token.save()
        audit(Action.TOKEN_CREATED, actor=actor, detail=f"token {name} ({scope})")
    return token, secret


def apitoken_revoke(*, token_ids: Iterable[int], actor: User | None) -> int:
    """Revoke tokens at once; a revoked token gets 401 from its next request on."""
    with transaction.atomic():
        tokens = list(
            ApiToken.objects.select_for_update().filter(pk__in=list(token_ids), revoked_at=None)
        )
        ApiToken.objects.filter(pk__in=[t.pk for t in tokens]).update(revoked_at=timezone.now())
        for token in tokens:
            audit(Action.TOKEN_REVOKED, actor=actor, detail=f"token {token.name}")
    return len(tokens)


def apitoken_authenticate(*, secret: str) -> ApiToken | None:
    """The live token with this secret, or None."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 100:
        return None
    token = ApiToken.objects.filter(digest=_digest(secret), revoked_at=None).first()
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _USE_RECORDED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


# --- lookups ----------------------------------------------------------------------------


def _banks_of(keys: Iterable[int]) -> dict[int, tuple[str, str]]:
    """(bank name, bank action) of banned fingerprints."""
    rows = BannedFingerprint.objects.filter(pk__in=list(keys)).values_list(
        "id", "bank__name", "bank__action"
    )
    return {key: (name, action) for key, name, action in rows}


def lookup_signal(
    *, signal_type: str, signal: str, banks: set[str] | None = None
) -> dict[str, list[dict[str, object]]]:
    """The banned fingerprints one hash matches, by bank, as HMA's ``/m/lookup`` answers:
    a PDQ, pHash or dHash under the match rule (and each bank's own limits), an MD5 or
    SHA-256 by equality. As in the pipeline, a match in an allow bank (known-good) voids
    the others; an allow bank's own matches are listed only when ``banks`` names it.
    Raises ValueError for a malformed hash."""
    entry = parse_signal(signal_type, signal)
    blocklist = current_blocklist()
    detector = blocklist.detector
    with blocklist.lock:  # not changed by another thread meanwhile
        if entry.kind in DIGESTS:
            hits = [(key, 0) for key in detector.files(entry.value)]
        else:
            fingerprint = Fingerprint(hashes={entry.kind: entry.value})
            hits = [
                (match.key, match.distances.get(entry.kind, 0))
                for match in detector.lookup(fingerprint)
            ]
    owners = _banks_of(key for key, _ in hits)  # rows deleted since the build drop out
    hits = [(key, distance) for key, distance in hits if key in owners]
    allowed = [(key, d) for key, d in hits if owners[key][1] == Bank.Act.ALLOW]
    if allowed:
        hits = [(key, d) for key, d in allowed if banks is not None and owners[key][0] in banks]
    found: dict[str, list[dict[str, object]]] = {}
    for key, distance in hits:
        bank = owners[key][0]
        if banks is None or bank in banks:
            found.setdefault(bank, []).append({"bank_content_id": key, "distance": str(distance)})
    return found


@dataclass(frozen=True)
class ImageLookup:
    hashes: dict[str, object]
    verdict: Verdict
    matches: list[dict[str, object]]


def lookup_image(*, data: bytes) -> ImageLookup:
    """The whole decision a worker would make on this image, written nowhere. Raises
    hashes.errors.ImageError for what the workers' loader refuses."""
    loaded = load(data)
    checked = probes(loaded)
    blocklist = current_blocklist()
    sha256 = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    found, verdict = judge(blocklist, checked, sha256, md5)
    owners = _banks_of(found)
    matches = []
    for key, detection in found.items():
        bank, action = owners.get(key, ("", ""))
        matches.append(
            {
                "bank": bank,
                "bank_action": action,
                "bank_content_id": key,
                "stage": str(detection.stage),
                "rule": detection.rule,
                "variant": detection.variant,
                "frame": detection.frame,
                "distances": detection.distances,
                "voided": key in verdict.voided,
                "explanation": detection.describe(),
            }
        )
    first = checked[0].fingerprint
    return ImageLookup(
        hashes={**first.hashes, "pdq_quality": first.pdq_quality, "sha256": sha256, "md5": md5},
        verdict=verdict,
        matches=matches,
    )


def hash_image(*, data: bytes) -> dict[str, object]:
    """The hashes of an image's first frame at full size, as a ban computes them and as
    other PDQ tools do (an upload is matched on a smaller copy, a few bits away)."""
    _, fingerprint = distinct_frames(load(data, full_size=True))[0]
    return {
        **{name: fingerprint.hashes[name] for name in ALGORITHMS if name in fingerprint.hashes},
        "pdq_quality": fingerprint.pdq_quality,
    }


# --- writes -----------------------------------------------------------------------------


def bank_add_signal(
    *, bank: str, signal_type: str, signal: str, token: ApiToken, quality: int | None = None
) -> tuple[BannedFingerprint, bool]:
    """Ban one hash in a bank (HMA's ``/c/bank/<name>/signal``); returns the row and
    whether it is new. A hash the bank holds deactivated is banned again. Raises
    Bank.DoesNotExist; ActionRefused for the local bank (moderators' own) and allow banks
    (a known-good hash voids bans: moderators add those); ValueError for a malformed
    hash or one too plain to ban."""
    entry = parse_signal(signal_type, signal, quality=quality)
    target = Bank.objects.get(name=bank)
    if target.name == Bank.LOCAL or target.action == Bank.Act.ALLOW:
        raise ActionRefused(
            f"Bank {target.name} takes hashes from moderators only: "
            + ("it is this site's own." if target.name == Bank.LOCAL else "it is an allow bank.")
        )
    refusal = entry_refusal(entry, match_rule().pdq_min_quality)
    if refusal:
        raise ValueError(f"This {entry.kind} hash is {refusal}.")
    with transaction.atomic():
        existing = (
            BannedFingerprint.objects.select_for_update()
            .filter(bank=target, **{entry.kind: entry.value})
            .first()
        )
        detail = f"through the API by token {token.name}: {entry.kind} {entry.value}"
        if existing is not None:
            if not existing.active:
                existing.active = True
                existing.save(update_fields=["active", "updated_at"])
                audit(Action.BAN_ACTIVATED, fingerprint=existing, detail=detail)
                blocklist_changed(added=[existing.pk])
                retro_check_start(ids=[existing.pk])
            return existing, False
        row = BannedFingerprint(**entry_fields(target, entry, timezone.now()))
        row.source = BannedFingerprint.Source.API
        row.save()
        audit(Action.BAN_ADDED, fingerprint=row, detail=detail)
        blocklist_changed(added=[row.pk])
        retro_check_start(ids=[row.pk])
    return row, True
