"""Banned fingerprints: adding, changing, deactivating, deleting and recomputing them."""

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from hashes.algorithms import (
    ALGORITHMS,
    Fingerprint,
    algorithm_versions,
    distinct_frames,
    parse_hash,
)
from hashes.detect import reference_features
from hashes.feature_index import filed_words, words_to_bytes
from hashes.loading import LoadedImage
from hashes.local import LocalFeatures
from hashes.matching import is_low_detail
from moderation import files
from moderation.blocklist import match_rule
from moderation.models import (
    Bank,
    BannedFingerprint,
    BlocklistChange,
    BlocklistVersion,
    Category,
    Upload,
)
from moderation.services.common import Action, audit, load
from moderation.services.retro import retro_check_start


def _version_locked() -> BlocklistVersion:
    """The version row, locked until the caller's transaction ends: changes to the
    blocklist are written one transaction at a time, so their ids follow commit order."""
    BlocklistVersion.objects.get_or_create(pk=1, defaults={"token": uuid.uuid4().hex})
    return BlocklistVersion.objects.select_for_update().get(pk=1)


def blocklist_bump() -> None:
    """Tell every process to rebuild its blocklist (call inside the change): for changes
    too wide to follow one by one (a bank, an import, a rehash)."""
    with transaction.atomic():  # the caller's, where there is one
        version = _version_locked()
        version.token = uuid.uuid4().hex
        version.save(update_fields=["token", "changed_at"])
        # A rebuild reads every row: the changes before it are moot.
        BlocklistChange.objects.filter(created_at__lt=timezone.now() - CHANGES_KEPT).delete()


# Changes older than this go at the next rebuild, which makes them moot.
CHANGES_KEPT = timedelta(days=1)


def blocklist_changed(*, added: Iterable[int] = (), removed: Iterable[int] = ()) -> None:
    """Tell every process that these fingerprints were added (or changed) or removed
    (call inside the change): each applies them in place at its next check."""
    with transaction.atomic():  # the caller's, where there is one
        version = _version_locked()
        changes = BlocklistChange.objects.bulk_create(
            [
                *(BlocklistChange(fingerprint_id=key, op=BlocklistChange.Op.ADD) for key in added),
                *(
                    BlocklistChange(fingerprint_id=key, op=BlocklistChange.Op.REMOVE)
                    for key in removed
                ),
            ]
        )
        if changes:
            newest = BlocklistChange.objects.aggregate(newest=Max("id"))["newest"] or 0
            version.last_change = newest
            version.save(update_fields=["last_change", "changed_at"])


# --- banned fingerprints --------------------------------------------------------------


@dataclass(frozen=True)
class BanFrame:
    fingerprint: Fingerprint
    colours: bytes
    words: bytes
    mirrored_words: bytes | None
    features: bytes

    @classmethod
    def of(cls, loaded: LoadedImage) -> "list[BanFrame]":
        frames = []
        for frame, fingerprint in distinct_frames(loaded):
            features, colours = reference_features(frame)
            found, mirrored = filed_words(features)
            frames.append(
                cls(
                    fingerprint,
                    colours.tobytes(),
                    words_to_bytes(found),
                    words_to_bytes(mirrored) if mirrored is not None else None,
                    features.to_bytes(),
                )
            )
        return frames

    def fields(self) -> dict[str, object]:
        return {
            **_hash_fields(self.fingerprint),
            "colours": self.colours,
            "words": self.words,
            "mirrored_words": self.mirrored_words,
            "features": self.features,
        }


@dataclass(frozen=True)
class BanImage:
    data: bytes
    sha256: str
    format: str
    frames: list[BanFrame]

    @classmethod
    def read(cls, data: bytes) -> "BanImage":
        # Full size: exported PDQ hashes must be what other PDQ tools compute from the file.
        loaded = load(data, full_size=True)
        return cls(data, files.sha256_of(data), loaded.format, BanFrame.of(loaded))


def banned_add_image(
    *,
    data: bytes,
    category: str = Category.OTHER,
    reason: str = "",
    actor: User | None = None,
) -> list[BannedFingerprint]:
    """Ban an image: one row per distinct frame, the image kept as the reference.

    Banning the same file again reactivates and returns the rows it made before.
    Raises hashes.errors.ImageError for files that are not usable images.
    """
    image = BanImage.read(data)
    with transaction.atomic():
        return ban_image(
            image,
            category=category,
            reason=reason,
            actor=actor,
            source=BannedFingerprint.Source.IMAGE,
            source_upload=None,
        )


def local_bank() -> Bank:
    """The moderators' own bank, where images and pasted hashes they ban go."""
    bank, _ = Bank.objects.get_or_create(
        name=Bank.LOCAL, defaults={"description": "Banned by this site's moderators."}
    )
    return bank


def ban_image(
    image: BanImage,
    *,
    category: str,
    reason: str,
    actor: User | None,
    source: str,
    source_upload: Upload | None,
) -> list[BannedFingerprint]:
    existing = list(BannedFingerprint.objects.filter(sha256=image.sha256).order_by("frame"))
    if existing:
        inactive = [row for row in existing if not row.active]
        if inactive:
            banned_set_active(fingerprint_ids=[r.pk for r in inactive], active=True, actor=actor)
            for row in inactive:
                row.active = True
        return existing
    reference_name = f"{image.sha256}.{image.format.lower()}"
    files.write_private(files.reference_dir(), reference_name.encode(), image.data)
    rows = [
        BannedFingerprint.objects.create(
            **frame.fields(),
            sha256=image.sha256,
            frame=index,
            reference_name=reference_name,
            algorithm_versions=algorithm_versions(),
            source=source,
            source_upload=source_upload,
            bank=local_bank(),
            category=category,
            reason=reason,
            added_by=actor,
        )
        for index, frame in enumerate(image.frames)
    ]
    for row in rows:
        audit(Action.BAN_ADDED, actor=actor, fingerprint=row, detail=reason)
    blocklist_changed(added=[row.pk for row in rows])
    retro_check_start(ids=[row.pk for row in rows])
    return rows


def _hash_fields(fingerprint: Fingerprint) -> dict[str, object]:
    fields: dict[str, object] = {name: fingerprint.hashes.get(name, "") for name in ALGORITHMS}
    fields["pdq_quality"] = fingerprint.pdq_quality if "pdq" in fingerprint.hashes else None
    return fields


def banned_add_hashes(
    *,
    hashes: Mapping[str, str],
    pdq_quality: int | None = None,
    category: str = Category.OTHER,
    reason: str = "",
    actor: User | None = None,
) -> BannedFingerprint:
    """Ban pasted hashes, e.g. PDQ hashes shared by another platform.

    Raises ValueError with a message for the moderator when a hash is malformed.
    """
    parsed = {name: parse_hash(name, text) for name, text in hashes.items() if text.strip()}
    if not parsed:
        raise ValueError("Give at least one hash: PDQ, pHash or dHash.")
    if "pdq" not in parsed:
        pdq_quality = None
    elif pdq_quality is None:
        pdq_quality = 100
    fingerprint = Fingerprint(hashes=parsed, pdq_quality=pdq_quality)
    if is_low_detail(fingerprint, match_rule().pdq_min_quality):
        raise ValueError(
            "These hashes are of a plain picture (a flat colour, gradient or near-blank image: "
            "almost all bits are the same, or the PDQ quality is too low). They would match "
            "every other smooth image, so they cannot be banned as hashes; ban the image file "
            "instead to catch exact copies of it."
        )
    with transaction.atomic():
        row = BannedFingerprint.objects.create(
            **_hash_fields(fingerprint),
            algorithm_versions={name: ALGORITHMS[name].version for name in parsed},
            source=BannedFingerprint.Source.HASH,
            bank=local_bank(),
            category=category,
            reason=reason,
            added_by=actor,
        )
        audit(Action.BAN_ADDED, actor=actor, fingerprint=row, detail=reason)
        blocklist_changed(added=[row.pk])
        retro_check_start(ids=[row.pk])
    return row


def banned_update(
    *, fingerprint_id: int, category: str, reason: str, actor: User | None
) -> BannedFingerprint:
    """Change a ban's category or reason; neither changes what it matches."""
    with transaction.atomic():
        row = BannedFingerprint.objects.select_for_update().get(pk=fingerprint_id)
        changes = [
            f"{name} {old or '(empty)'} → {new or '(empty)'}"
            for name, old, new in (
                ("category", row.category, category),
                ("reason", row.reason, reason),
            )
            if old != new
        ]
        if not changes:
            return row
        row.category, row.reason = category, reason
        row.save(update_fields=["category", "reason", "updated_at"])
        audit(Action.BAN_CHANGED, actor=actor, fingerprint=row, detail="; ".join(changes))
    return row


def banned_set_active(*, fingerprint_ids: Iterable[int], active: bool, actor: User | None) -> int:
    """Deactivate (or reactivate) banned fingerprints; returns how many changed."""
    with transaction.atomic():
        rows = list(
            BannedFingerprint.objects.select_for_update()
            .filter(pk__in=list(fingerprint_ids))
            .exclude(active=active)
        )
        if not rows:
            return 0
        BannedFingerprint.objects.filter(pk__in=[r.pk for r in rows]).update(
            active=active, updated_at=timezone.now()
        )
        action = Action.BAN_ACTIVATED if active else Action.BAN_DEACTIVATED
        for row in rows:
            audit(action, actor=actor, fingerprint=row)
        keys = [row.pk for row in rows]
        if active:
            blocklist_changed(added=keys)
        else:
            blocklist_changed(removed=keys)
        if active:
            known_good = set(
                Bank.objects.filter(action=Bank.Act.ALLOW).values_list("pk", flat=True)
            )
            retro_check_start(ids=[row.pk for row in rows if row.bank_id not in known_good])
    return len(rows)


def banned_delete(*, fingerprint_ids: Iterable[int], actor: User | None) -> int:
    """Delete banned fingerprints, and their reference images once nothing uses them."""
    with transaction.atomic():
        rows = list(BannedFingerprint.objects.filter(pk__in=list(fingerprint_ids)))
        for row in rows:
            audit(Action.BAN_DELETED, actor=actor, detail=f"{row} (sha256 {row.sha256})")
        BannedFingerprint.objects.filter(pk__in=[r.pk for r in rows]).delete()
        blocklist_changed(removed=[row.pk for row in rows])
        names = {row.reference_name for row in rows if row.reference_name}
        still_used = set(
            BannedFingerprint.objects.filter(reference_name__in=names).values_list(
                "reference_name", flat=True
            )
        )
        for name in names - still_used:
            transaction.on_commit(partial(files.unlink, files.reference_dir(), name.encode()))
    return len(rows)


def _features_stale(data: bytes | memoryview) -> bool:
    """Whether stored features lack the grey copy or the coarser scale of today's."""
    features = LocalFeatures.from_bytes(bytes(data))
    return features.pixels is None or not features.scales


def banned_rehash() -> tuple[int, int]:
    """Recompute, from their reference images, fingerprints an older algorithm made,
    and the second stage's colours, words and features where they are missing or older
    than today's (``_features_stale``).

    Returns (rows recomputed, rows left as they are because they were pasted as hashes
    and have no image to recompute from).
    """
    current = algorithm_versions()
    stale = [
        row
        for row in BannedFingerprint.objects.all().iterator()
        if any(
            row.algorithm_versions.get(name, version) != version
            for name, version in current.items()
        )
        or (
            row.reference_name
            and (
                row.colours is None
                or row.words is None
                or row.mirrored_words is None
                or row.features is None
                or _features_stale(row.features)
            )
        )
    ]
    by_reference: dict[str, list[BannedFingerprint]] = {}
    for row in stale:
        if row.reference_name:
            by_reference.setdefault(row.reference_name, []).append(row)
    recomputed = 0
    for name, rows in by_reference.items():
        data = files.read_regular_file(
            files.reference_dir(), name.encode(), max_bytes=settings.HASHGUARD_MAX_BYTES
        )
        frames = BanFrame.of(load(data, full_size=True))
        with transaction.atomic():
            for row in rows:
                if row.frame < len(frames):
                    for field, value in frames[row.frame].fields().items():
                        setattr(row, field, value)
                row.algorithm_versions = current
                row.save()
                recomputed += 1
            blocklist_bump()
    return recomputed, len(stale) - recomputed
