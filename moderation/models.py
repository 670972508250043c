from enum import Enum

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils import timezone

from hashes.algorithms import Fingerprint
from hashes.detect import Stage as DetectionStage


class Category(models.TextChoices):
    NUDITY = "nudity", "Nudity or sexual content"
    VIOLENCE = "violence", "Violence or gore"
    HATE = "hate", "Hate symbols"
    SCAM = "scam", "Scam or spam"
    IMPERSONATION = "impersonation", "Impersonation or stolen photo"
    COPYRIGHT = "copyright", "Copyright"
    OTHER = "other", "Other"


class ErrorCode(models.TextChoices):
    """Why an upload was not decided clean or quarantined; the image loader's codes
    (hashes/errors.py) and the pipeline's own."""

    NOT_IMAGE = "unsupported_format", "Not an image"
    UNCHECKABLE_FORMAT = "uncheckable_format", "An image format hashguard cannot decode"
    CORRUPT = "corrupt", "Damaged beyond decoding"
    DECOMPRESSION_BOMB = "decompression_bomb", "Too many pixels"
    ANIMATION_TOO_LONG = "animation_too_long", "Animation too long to check"
    FILE_TOO_LARGE = "file_too_large", "File too large"
    TOO_SMALL = "too_small", "Too small to show a picture"
    UNSAFE_PATH = "unsafe_path", "Symlink or not a regular file"
    UNREADABLE = "unreadable", "No permission to read"
    MISSING = "missing", "Removed before it was checked"
    CHANGED = "changed", "Changed after it was recorded"
    QUEUE_UNAVAILABLE = "queue_unavailable", "Task queue unavailable"
    TIMEOUT = "timeout", "Took too long to check"
    WORKER_DIED = "worker_died", "Stopped a worker repeatedly"
    INTERNAL = "internal", "Internal error"


class Bank(models.Model):
    """A named list of banned fingerprints: the moderators' own (``local``), or one fed by
    a hash-sharing programme or a partner's list. A disabled bank matches nothing."""

    class Source(models.TextChoices):
        MANUAL = "manual", "Added by moderators"
        FILE = "file", "Imported from hash lists"
        API = "api", "Fed through the API"

    class Act(models.TextChoices):
        QUARANTINE = "quarantine", "Quarantine the upload"
        REVIEW = "review", "Leave the file in place and queue it for review"
        ALLOW = "allow", "Known-good: voids the matches of the same picture in other banks"

    LOCAL = "local"
    LIMITS = {"pdq": "pdq_limit", "phash": "phash_limit", "dhash": "dhash_limit"}

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.MANUAL)
    enabled = models.BooleanField(default=True)
    action = models.CharField(max_length=16, choices=Act.choices, default=Act.QUARANTINE)
    # This bank's own match distances, in place of that algorithm's in every group of the
    # match rule; empty: the rule's.
    pdq_limit = models.PositiveSmallIntegerField(
        "PDQ limit", null=True, blank=True, validators=[MaxValueValidator(256)]
    )
    phash_limit = models.PositiveSmallIntegerField(
        "pHash limit", null=True, blank=True, validators=[MaxValueValidator(64)]
    )
    dhash_limit = models.PositiveSmallIntegerField(
        "dHash limit", null=True, blank=True, validators=[MaxValueValidator(64)]
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.name == self.LOCAL and self.action != self.Act.QUARANTINE:
            raise ValidationError(
                {"action": "The local bank holds this site's own bans: it always quarantines."}
            )

    def limits(self) -> tuple[tuple[str, int], ...]:
        """The (algorithm, distance) limits this bank sets, for hashes.detect."""
        return tuple(
            (name, getattr(self, column))
            for name, column in self.LIMITS.items()
            if getattr(self, column) is not None
        )


# A banned fingerprint with no file digest or colours: a hash from a list, or pasted.
HASH_ONLY = models.Q(sha256="", md5="", colours__isnull=True)


class BannedFingerprint(models.Model):
    """The fingerprints of one banned image (one row per distinct frame of an animation),
    or one hash from a list."""

    class Source(models.TextChoices):
        IMAGE = "image", "Image upload"
        HASH = "hash", "Pasted hash"
        UPLOAD = "upload", "Flagged upload"
        LIST = "list", "Imported hash list"
        API = "api", "Added through the API"

    bank = models.ForeignKey(Bank, on_delete=models.PROTECT, related_name="fingerprints")
    # Where an imported hash came from: its id in the list, and the list's labels.
    external_id = models.CharField(max_length=255, blank=True)
    tags = models.JSONField(default=list, blank=True)
    imported_at = models.DateTimeField(null=True, blank=True)

    # Each hash column is indexed where it is set (see Meta): a row holds one or a few.
    phash = models.CharField("pHash", max_length=16, blank=True)
    dhash = models.CharField("dHash", max_length=16, blank=True)
    pdq = models.CharField("PDQ", max_length=64, blank=True)
    pdq_quality = models.PositiveSmallIntegerField("PDQ quality", null=True, blank=True)
    # Which version of each algorithm computed the hashes, so they can be recomputed
    # from the reference image when an algorithm changes.
    algorithm_versions = models.JSONField(default=dict, blank=True)
    # sha256 (or, from shared lists, MD5) of the banned file: exact copies match whatever
    # their fingerprints say.
    sha256 = models.CharField("SHA-256", max_length=64, blank=True)
    md5 = models.CharField("MD5", max_length=32, blank=True)
    frame = models.PositiveIntegerField(default=0)
    # File name in HASHGUARD_REFERENCE_DIR; served to staff only, through a view.
    reference_name = models.CharField(max_length=255, blank=True)
    # From the reference frame, for the second stage (hashes/detect.py): a colour signature
    # and the words of its keypoints, as it is and mirrored (hashes/feature_index.py), to
    # pick candidates by, and the keypoints to verify them. Empty for pasted hashes.
    colours = models.BinaryField(null=True, blank=True, editable=False)
    words = models.BinaryField(null=True, blank=True, editable=False)
    mirrored_words = models.BinaryField(null=True, blank=True, editable=False)
    features = models.BinaryField(null=True, blank=True, editable=False)
    source = models.CharField(max_length=16, choices=Source.choices)
    source_upload = models.ForeignKey(
        "Upload", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    category = models.CharField(max_length=32, choices=Category.choices, default=Category.OTHER)
    reason = models.TextField(blank=True)
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    active = models.BooleanField(default=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(phash="", dhash="", pdq="", sha256="", md5=""),
                name="banned_fingerprint_has_a_hash",
            )
        ]
        indexes = [
            models.Index(fields=[name], condition=~models.Q(**{name: ""}), name=f"banned_{name}")
            for name in ("pdq", "phash", "dhash", "sha256", "md5")
        ] + [
            # The rows a build reads one by one: a few among millions of listed hashes.
            models.Index(fields=["id"], condition=~HASH_ONLY, name="banned_picture")
        ]

    def __str__(self) -> str:
        label = self.pdq[:12] or self.phash or self.dhash or self.sha256[:12] or self.md5[:12]
        return f"#{self.pk} {self.get_category_display()} ({label}…)"

    def fingerprint(self) -> Fingerprint:
        hashes = {
            name: value
            for name, value in (("phash", self.phash), ("dhash", self.dhash), ("pdq", self.pdq))
            if value
        }
        return Fingerprint(hashes=hashes, pdq_quality=self.pdq_quality if self.pdq else None)


class BlocklistVersion(models.Model):
    """One row: a token that is new after every wide change to the banned fingerprints
    (every process builds its blocklist again), and the id of the newest BlocklistChange
    (every process applies the changes after the one it has).

    Each process reads it before every image, so a change takes effect everywhere at the
    next file. A random token rather than a counter, so that a database restored from a
    backup cannot bring back a value some process has already built an index for. Writers
    of changes lock this row first, so that change ids are handed out in commit order.
    """

    token = models.CharField(max_length=32)
    last_change = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"blocklist version {self.token}"


class BlocklistChange(models.Model):
    """One banned fingerprint added (or changed) or removed: the feed every process's
    blocklist follows, reading the key's row again and applying it in place instead of
    rebuilding (moderation/blocklist.py). A rebuild (a new BlocklistVersion token) makes
    the older changes moot."""

    class Op(models.TextChoices):
        ADD = "add", "Added or changed"
        REMOVE = "remove", "Removed"

    # Not a foreign key: a removal outlives its row.
    fingerprint_id = models.BigIntegerField()
    op = models.CharField(max_length=8, choices=Op.choices)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.op} #{self.fingerprint_id}"


class Upload(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        CLEAN = "clean", "Clean"
        QUARANTINED = "quarantined", "Quarantined (to review)"
        # Matched a bank whose action is review: the file stays where it is.
        REVIEW = "review", "Left in place (to review)"
        CONFIRMED = "confirmed", "Quarantined (confirmed)"
        RELEASED = "released", "Released"
        # Could not be checked (damaged beyond decoding, too large, too long an animation,
        # a worker gave up on it): moved to quarantine for a moderator, as
        # HASHGUARD_UNCHECKABLE = "hold" says.
        HELD = "held", "Held (could not be checked)"
        ERROR = "error", "Error"
        # Not an image by its content, whatever its name: recorded and left alone.
        NOT_IMAGE = "not_image", "Not an image"
        # A newer file at the same path, or the same file renamed, replaced this record.
        SUPERSEDED = "superseded", "Superseded"

    # Relative to HASHGUARD_MEDIA_DIR, so machines may mount the media tree anywhere; shown
    # with bytes that are not UTF-8 escaped. raw_path holds the exact bytes of such names.
    path = models.TextField()
    raw_path = models.BinaryField(null=True, blank=True, editable=False)
    # sha256 of the exact path bytes: how the watcher finds a path's records.
    path_key = models.CharField(max_length=64, db_index=True, editable=False)
    size = models.BigIntegerField()
    sha256 = models.CharField("SHA-256", max_length=64, db_index=True)
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING, db_index=True
    )
    error_code = models.CharField(max_length=32, blank=True, choices=ErrorCode.choices)
    error = models.TextField(blank=True)
    format = models.CharField(max_length=8, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    frame_count = models.PositiveIntegerField(null=True, blank=True)
    # One {"hashes": {...}, "pdq_quality": n} per distinct frame.
    fingerprints = models.JSONField(default=list, blank=True)
    # Relative to HASHGUARD_QUARANTINE_DIR while the file is quarantined.
    quarantine_name = models.CharField(max_length=1100, blank=True)
    # The file as the watcher found it: its permission bits, restored on release, and
    # its mtime and inode, so that a restarted watcher knows it without reading it again.
    file_mode = models.PositiveIntegerField(null=True, blank=True)
    mtime_ns = models.BigIntegerField(null=True, blank=True)
    inode = models.BigIntegerField(null=True, blank=True, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True, db_index=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # A worker's claim holds until then; it renews it while it works, and another worker
    # may take over an upload whose lease ran out (its worker died).
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    superseded_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    # A moderator who opened the review queue holds it until then; colleagues are handed
    # other uploads meanwhile.
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    # Kept whatever HASHGUARD_RETENTION_DAYS says (evidence for a case, say).
    legal_hold = models.BooleanField(default=False)
    # When the quarantined file was deleted for HASHGUARD_RETENTION_DAYS; the record, its
    # fingerprints and matches stay.
    purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One undecided record per version of a file, whichever process records it.
            models.UniqueConstraint(
                fields=["path_key", "sha256"],
                condition=models.Q(state__in=["pending", "processing"]),
                name="one_undecided_upload_per_content",
            )
        ]
        permissions = [
            ("review_upload", "Can confirm, release and flag uploads and see quarantined images"),
        ]

    def __str__(self) -> str:
        return self.path

    def relative_path(self) -> bytes:
        """The exact bytes of the path inside the media tree."""
        return bytes(self.raw_path) if self.raw_path is not None else self.path.encode()

    def seen(self) -> str:
        """What a moderator sees of this upload's state, sent back with a decision: any
        decision since (the pipeline's or a colleague's) changes it."""
        return ":".join(
            (
                self.state,
                f"{self.decided_at.timestamp():.6f}" if self.decided_at else "",
                f"{self.reviewed_at.timestamp():.6f}" if self.reviewed_at else "",
            )
        )


class Transition(Enum):
    """Every way an upload's state changes: (from these states, to these). Services change
    an upload's state only along one of these, with a conditional update on its sources."""

    CLAIM = ((Upload.State.PENDING, Upload.State.PROCESSING), (Upload.State.PROCESSING,))
    GIVE_BACK = ((Upload.State.PROCESSING,), (Upload.State.PENDING,))
    DECIDE = (
        (Upload.State.PROCESSING,),
        (
            Upload.State.CLEAN,
            Upload.State.QUARANTINED,
            Upload.State.REVIEW,
            Upload.State.HELD,
            Upload.State.ERROR,
            Upload.State.NOT_IMAGE,
        ),
    )
    FAIL = (
        (Upload.State.PENDING, Upload.State.PROCESSING),
        (Upload.State.HELD, Upload.State.ERROR),
    )
    RETRY = ((Upload.State.ERROR, Upload.State.HELD), (Upload.State.PENDING,))
    # A ban added later found a picture in an upload recorded clean.
    FOUND_LATER = ((Upload.State.CLEAN,), (Upload.State.QUARANTINED, Upload.State.REVIEW))
    SUPERSEDE = (
        (
            Upload.State.PENDING,
            Upload.State.PROCESSING,
            Upload.State.CLEAN,
            Upload.State.REVIEW,
            Upload.State.NOT_IMAGE,
            Upload.State.ERROR,
        ),
        (Upload.State.SUPERSEDED,),
    )
    CONFIRM = (
        (Upload.State.QUARANTINED, Upload.State.HELD, Upload.State.REVIEW),
        (Upload.State.CONFIRMED,),
    )
    RELEASE = (
        (Upload.State.QUARANTINED, Upload.State.CONFIRMED, Upload.State.HELD, Upload.State.REVIEW),
        (Upload.State.RELEASED,),
    )
    FLAG = ((Upload.State.CLEAN, Upload.State.RELEASED), (Upload.State.CONFIRMED,))

    @property
    def sources(self) -> list[str]:
        return list(self.value[0])

    @property
    def targets(self) -> list[str]:
        return list(self.value[1])


class Match(models.Model):
    class Stage(models.TextChoices):
        EXACT = DetectionStage.EXACT.value, "the same file"
        HASH = DetectionStage.HASH.value, "hashes"
        LOCAL = DetectionStage.LOCAL.value, "local features"
        MODERATOR = "moderator", "flagged by a moderator"

    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="matches")
    # Kept, with its distances and rule, when the banned fingerprint is deleted: it is the
    # record of why the upload was quarantined.
    fingerprint = models.ForeignKey(
        BannedFingerprint, null=True, on_delete=models.SET_NULL, related_name="matches"
    )
    # Hamming distance per algorithm, for every algorithm both sides have.
    distances = models.JSONField(default=dict)
    # Which part of the match rule held, e.g. "pdq<=31" or "sha256".
    rule = models.CharField(max_length=100)
    # Which stage found it and how the upload shows the banned picture, e.g. "mirrored" or
    # "as one panel of a collage (25% of the upload)".
    stage = models.CharField(max_length=32, blank=True, choices=Stage.choices)
    variant = models.CharField(max_length=255, blank=True)
    # The same, for the review page to draw: {"turn": a name in hashes.detect.TURNS,
    # "box": [left, top, right, bottom] as fractions of the upload, "rotation": degrees}.
    placement = models.JSONField(default=dict, blank=True)
    frame = models.PositiveIntegerField(default=0)
    # A moderator released the upload and said its exact copies may pass this ban.
    allowed = models.BooleanField(default=False)
    # The same picture as a known-good one of an allow bank found in the upload: this
    # match did not count (hashes.detect.Detector.voided).
    voided = models.BooleanField(default=False)
    # Found when a ban added later checked the upload, recorded clean, again.
    found_later = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["upload", "id"]
        constraints = [models.UniqueConstraint(fields=["upload", "fingerprint"], name="match_once")]
        verbose_name_plural = "matches"

    def __str__(self) -> str:
        return f"{self.upload} ~ {self.fingerprint} ({self.rule})"


class AuditEvent(models.Model):
    class Action(models.TextChoices):
        BAN_ADDED = "ban_added", "Banned fingerprint added"
        BAN_CHANGED = "ban_changed", "Banned fingerprint's category or reason changed"
        BAN_DEACTIVATED = "ban_deactivated", "Banned fingerprint deactivated"
        BAN_ACTIVATED = "ban_activated", "Banned fingerprint reactivated"
        BAN_DELETED = "ban_deleted", "Banned fingerprint deleted"
        BANS_IMPORTED = "bans_imported", "Hash list imported"
        BANK_ENABLED = "bank_enabled", "Bank enabled"
        BANK_DISABLED = "bank_disabled", "Bank disabled"
        UPLOAD_QUARANTINED = "upload_quarantined", "Upload quarantined"
        UPLOAD_HELD = "upload_held", "Upload held (could not be checked)"
        UPLOAD_TO_REVIEW = "upload_to_review", "Upload left in place for review"
        UPLOAD_ALLOWED = "upload_allowed", "Upload matched a known-good picture"
        BANK_CHANGED = "bank_changed", "Bank settings changed"
        TOKEN_CREATED = "token_created", "API token created"
        TOKEN_REVOKED = "token_revoked", "API token revoked"
        UPLOAD_CONFIRMED = "upload_confirmed", "Quarantine confirmed"
        UPLOAD_RELEASED = "upload_released", "Upload released"
        UPLOAD_FLAGGED = "upload_flagged", "Upload flagged as banned"
        UPLOAD_RETRIED = "upload_retried", "Upload checked again"
        RETRO_CHECKED = "retro_checked", "Clean uploads checked against new bans"
        UPLOAD_PURGED = "upload_purged", "Quarantined file deleted (retention)"
        LEGAL_HOLD_SET = "legal_hold_set", "Legal hold set"
        LEGAL_HOLD_LIFTED = "legal_hold_lifted", "Legal hold lifted"

    action = models.CharField(max_length=32, choices=Action.choices)
    # None when the pipeline acted on its own.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    upload = models.ForeignKey(
        Upload, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    fingerprint = models.ForeignKey(
        BannedFingerprint,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_events",
    )
    detail = models.TextField(blank=True)
    # What the moderator wrote with a decision, and the policy it applied.
    note = models.TextField(blank=True)
    label = models.CharField("policy label", max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} by {self.actor or 'hashguard'}"


class WorkerHeartbeat(models.Model):
    """What one worker process said about itself last: written every few seconds by the
    worker's liveness thread (moderation/liveness.py)."""

    name = models.CharField(max_length=255, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)
    # The uploads it holds: being checked by a pool process, or received and waiting.
    running = models.JSONField(default=list, blank=True)
    waiting = models.JSONField(default=list, blank=True)
    last_progress_at = models.DateTimeField(null=True, blank=True)
    # Set when it found itself making no progress with work to do, and why.
    stalled_since = models.DateTimeField(null=True, blank=True)
    stall = models.TextField(blank=True)

    class Meta:
        ordering = ["hostname", "pid"]

    def __str__(self) -> str:
        return self.name


class ImportJob(models.Model):
    """A hash list uploaded in the admin, imported by a worker in the background."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Importing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    bank = models.SlugField(max_length=64)
    format = models.CharField(max_length=16, default="auto")
    replace = models.BooleanField(default=False)
    # The uploaded list, kept in HASHGUARD_DATA_DIR/imports until it is imported.
    file_name = models.CharField(max_length=255)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    lines_total = models.PositiveIntegerField(default=0)
    lines_done = models.PositiveIntegerField(default=0)
    # Renewed with each batch; a job whose worker died is taken over once it is old.
    beat_at = models.DateTimeField(null=True, blank=True)
    summary = models.TextField(blank=True)
    problems = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"import #{self.pk} into {self.bank}"


class ApiToken(models.Model):
    """A client of the HTTP API. The secret is shown once, when it is made; only its
    SHA-256 is kept (it is 256 random bits, so a fast hash is as good as a slow one)."""

    class Scope(models.TextChoices):
        LOOKUP = "lookup", "Look up hashes and images"
        WRITE = "write", "Look up, and add hashes to banks"

    name = models.SlugField(max_length=64, unique=True)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.LOOKUP)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    # The secret's first characters, to tell tokens apart without keeping the secret.
    prefix = models.CharField(max_length=16, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return self.name

    def allows(self, scope: str) -> bool:
        return self.scope == scope or self.scope == self.Scope.WRITE


class MetricCount(models.Model):
    """One Prometheus counter series (a name and its labels), summed over every process:
    each process adds what it counted every few seconds (moderation/metrics.py)."""

    name = models.CharField(max_length=100)
    labels = models.CharField(max_length=255, blank=True)  # as Prometheus writes them
    value = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name", "labels"], name="metric_series_once")
        ]

    def __str__(self) -> str:
        return f"{self.name}{{{self.labels}}} {self.value}"


class BlocklistLoad(models.Model):
    """Which blocklist a process (a worker's pool process, a web process) holds, and since
    when: how /metrics tells how current each one is."""

    process = models.CharField(max_length=255, unique=True)  # host:pid
    version = models.CharField(max_length=32)
    last_change = models.BigIntegerField(default=0)  # the newest change it applied
    built_at = models.DateTimeField()
    checked_at = models.DateTimeField(db_index=True)
    fingerprints = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.process} holds blocklist {self.version}"


class ImagePreference(models.Model):
    """How one moderator wants images shown until revealed; without a row, the site's
    HASHGUARD_IMAGE_* settings."""

    class Reveal(models.TextChoices):
        CLICK = "click", "Click an image (or press v) to reveal it"
        HOVER = "hover", "Reveal an image while the pointer is over it"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="image_preference"
    )
    blur = models.PositiveSmallIntegerField(
        "blur (pixels)",
        validators=[MaxValueValidator(60)],
        help_text="0 shows images as they are.",
    )
    greyscale = models.BooleanField(default=False)
    reveal = models.CharField(max_length=8, choices=Reveal.choices, default=Reveal.CLICK)

    def __str__(self) -> str:
        return f"image preferences of {self.user}"


class RetroCheck(models.Model):
    """New bans checked against the uploads recorded clean in the HASHGUARD_RETRO_DAYS
    before, by a worker in the background (moderation/services/retro.py)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Checking"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    # Which bans: a list of {"ids": [...]} and {"bank": id, "since": ISO time} criteria;
    # bans added while the check waits to start join it.
    bans = models.JSONField(default=list)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    found = models.PositiveIntegerField(default=0)
    # The last upload checked, to resume from when a worker died or it failed.
    last_upload = models.BigIntegerField(default=0)
    # The run that holds it: a worker that lost it (presumed dead) writes nothing more.
    owner = models.CharField(max_length=32, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    beat_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    summary = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "check of new bans against past uploads"
        verbose_name_plural = "checks of new bans against past uploads"

    def __str__(self) -> str:
        return f"look-back #{self.pk}"
