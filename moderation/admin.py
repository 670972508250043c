from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from hashes.errors import ImageError
from moderation import files, selectors, services
from moderation.forms import ApiTokenForm, BanForm, FlagForm, HashListForm
from moderation.models import (
    ApiToken,
    AuditEvent,
    Bank,
    BannedFingerprint,
    ImportJob,
    Match,
    RetroCheck,
    Upload,
    WorkerHeartbeat,
)
from moderation.workspace import ReviewWorkspace

State = Upload.State


def _image_url(kind: str, pk: int, *, thumb: bool) -> str:
    url = reverse("protected-image", args=[kind, pk])
    return f"{url}?size=thumb" if thumb else url


def image_tag(kind: str, pk: int, *, alt: str, size: int = 160) -> str:
    """An upload's or a ban's image, blurred until revealed (admin/base_site.html); a
    click reveals it, a second opens it full size."""
    return format_html(
        '<a href="{}" target="_blank" rel="noopener" class="hg-protected-wrap">'
        '<img class="hg-protected" src="{}" alt="{}" style="max-width:{}px;max-height:{}px">'
        "</a>",
        _image_url(kind, pk, thumb=False),
        _image_url(kind, pk, thumb=True),
        alt,
        size,
        size,
    )


def distances_text(distances: dict[str, int]) -> str:
    return ", ".join(f"{name} {value}" for name, value in sorted(distances.items())) or "—"


class AuditedHistory:
    """An object's History is its part of the audit log, where hashguard records every
    action (Django's own change log has none of them)."""

    audit_field = ""

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict | None = None
    ) -> HttpResponse:
        if not object_id.isdigit():
            raise Http404
        url = reverse("admin:moderation_auditevent_changelist")
        return HttpResponseRedirect(f"{url}?{self.audit_field}__id__exact={object_id}")


class RecordAdmin(admin.ModelAdmin):
    """Rows only the pipeline writes: moderators look, and act through services."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


def moderator(request: HttpRequest) -> User:
    """The logged-in moderator acting: every admin page requires a login."""
    if not isinstance(request.user, User):
        raise PermissionDenied
    return request.user


def _warn_of_workers(model_admin: admin.ModelAdmin, request: HttpRequest) -> None:
    for line in selectors.workers_in_trouble():
        model_admin.message_user(request, line.capitalize(), messages.WARNING)


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return Upload.State.choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(state=self.value()) if self.value() else queryset


class MatchInline(admin.TabularInline):
    model = Match
    fields = (
        "reference",
        "fingerprint",
        "bank",
        "stage",
        "rule",
        "variant",
        "distance_list",
        "frame",
        "voided",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # The matches are part of the upload: why it was quarantined.
        return request.user.has_perm("moderation.view_upload")

    @admin.display(description="banned image")
    def reference(self, match: Match) -> str:
        if match.fingerprint is None:
            return "banned fingerprint deleted since"
        if not match.fingerprint.reference_name:
            return "pasted hash"
        return image_tag("reference", match.fingerprint.pk, alt="banned reference")

    @admin.display(description="distances")
    def distance_list(self, match: Match) -> str:
        return distances_text(match.distances)

    @admin.display(description="bank (its action)")
    def bank(self, match: Match) -> str:
        if match.fingerprint is None:
            return "—"
        bank = match.fingerprint.bank
        return f"{bank.name} ({bank.get_action_display().lower()})"


@admin.register(Upload)
class UploadAdmin(AuditedHistory, RecordAdmin):
    audit_field = "upload"
    list_display = (
        "thumbnail",
        "path",
        "state_seen",
        "matched",
        "size",
        "created_at",
        "decided_at",
    )
    list_display_links = ("path",)
    list_filter = (StateFilter, "format", "legal_hold")
    search_fields = ("path", "sha256")
    date_hierarchy = "created_at"
    inlines = [MatchInline]
    actions = [
        "confirm",
        "release",
        "release_allowing_copies",
        "flag",
        "retry",
        "hold",
        "lift_hold",
    ]
    readonly_fields = (
        "preview",
        "path",
        "state",
        "error_code",
        "error",
        "size",
        "sha256",
        "format",
        "width",
        "height",
        "frame_count",
        "fingerprints",
        "quarantine_name",
        "superseded_by",
        "attempts",
        "created_at",
        "queued_at",
        "claimed_at",
        "lease_expires_at",
        "decided_at",
        "reviewed_by",
        "reviewed_at",
        "legal_hold",
        "purged_at",
    )
    fields = readonly_fields

    def has_review_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("moderation.review_upload")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        _warn_of_workers(self, request)
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("matches")

    @admin.display(description="image")
    def thumbnail(self, upload: Upload) -> str:
        if upload.state not in (
            State.CLEAN,
            State.QUARANTINED,
            State.REVIEW,
            State.CONFIRMED,
            State.RELEASED,
            State.HELD,
        ):
            return "—"
        return image_tag("upload", upload.pk, alt=upload.path)

    @admin.display(description="image")
    def preview(self, upload: Upload) -> str:
        return self.thumbnail(upload)

    @admin.display(description="image")
    def thumbnail_unless_quarantined(self, upload: Upload) -> str:
        return "quarantined" if upload.quarantine_name else self.thumbnail(upload)

    def _images_for(self, request: HttpRequest, names: Sequence[Any]) -> list[Any]:
        """Without the review permission quarantined images are refused: show no image."""
        if self.has_review_permission(request):
            return list(names)
        return [
            "thumbnail_unless_quarantined" if name in ("thumbnail", "preview") else name
            for name in names
        ]

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        return self._images_for(request, super().get_list_display(request))

    def get_fields(self, request: HttpRequest, obj: Upload | None = None) -> list[Any]:
        return self._images_for(request, super().get_fields(request, obj))

    def get_readonly_fields(self, request: HttpRequest, obj: Upload | None = None) -> list[Any]:
        return self._images_for(request, super().get_readonly_fields(request, obj))

    @admin.display(description="state", ordering="state")
    def state_seen(self, upload: Upload) -> str:
        # The state as this page shows it goes back with a bulk action, so that an action
        # on a page loaded before a colleague's decision does not override it.
        return format_html(
            '{}<input type="hidden" name="seen-{}" value="{}">',
            upload.get_state_display(),
            upload.pk,
            upload.seen(),
        )

    @admin.display(description="matched")
    def matched(self, upload: Upload) -> str:
        return (
            format_html_join(
                ", ",
                "#{} ({}){}",
                (
                    (m.fingerprint_id, m.variant or m.rule, " void" if m.voided else "")
                    for m in upload.matches.all()
                ),
            )
            or "—"
        )

    @admin.action(description="Confirm quarantine", permissions=["review"])
    def confirm(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, services.upload_confirm, "confirmed", needs_seen=True)

    @admin.action(description="Release this file (put back where it was)", permissions=["review"])
    def release(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, services.upload_release, "released", needs_seen=True)

    @admin.action(
        description="Release, and let exact copies pass the bans it matched",
        permissions=["review"],
    )
    def release_allowing_copies(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(
            request,
            queryset,
            lambda **kw: services.upload_release(**kw, allow_copies=True),
            "released; their exact copies pass the bans they matched from now on",
            needs_seen=True,
        )

    @admin.action(description="Check again (uploads in error)", permissions=["review"])
    def retry(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(
            request, queryset, services.upload_retry, "queued to be checked again", needs_seen=True
        )

    @admin.action(description="Put on legal hold (keep its file)", permissions=["review"])
    def hold(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = services.upload_set_legal_hold(
            upload_ids=queryset.values_list("pk", flat=True), hold=True, actor=moderator(request)
        )
        self.message_user(request, f"{count} upload(s) put on legal hold.", messages.SUCCESS)

    @admin.action(description="Lift legal hold", permissions=["review"])
    def lift_hold(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = services.upload_set_legal_hold(
            upload_ids=queryset.values_list("pk", flat=True), hold=False, actor=moderator(request)
        )
        self.message_user(request, f"{count} upload(s) off legal hold.", messages.SUCCESS)

    @admin.action(description="Flag as banned", permissions=["review"])
    def flag(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        form = FlagForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return TemplateResponse(
                request,
                "admin/moderation/upload/flag.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Flag uploads as banned",
                    # Each with the state the list showed it in, sent on with the flag.
                    "items": [
                        {
                            "upload": upload,
                            "seen": request.POST.get(f"seen-{upload.pk}", ""),
                        }
                        for upload in queryset
                    ],
                    "form": form,
                    "opts": self.model._meta,
                    "action_checkbox_name": ACTION_CHECKBOX_NAME,
                },
            )
        self._each(
            request,
            queryset,
            lambda **kw: services.upload_flag(**kw, **form.cleaned_data),
            "flagged as banned",
            needs_seen=True,
        )
        return None

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        act: Callable[..., object],
        done: str,
        *,
        needs_seen: bool = False,
    ) -> None:
        """Act on each upload, with the state the page showed it in: one that changed
        since is left as it is, and the message says who changed it. ``needs_seen``: an
        upload the page did not show (all across pages) is refused too."""
        count = 0
        for upload in queryset:
            seen = request.POST.get(f"seen-{upload.pk}") or None
            try:
                if seen is None and needs_seen:
                    raise services.ActionRefused(
                        "not shown on the page you acted from; open it to decide"
                    )
                act(upload_id=upload.pk, actor=moderator(request), seen=seen)
                count += 1
            except (services.ActionRefused, ImageError, files.UnsafePath) as exc:
                self.message_user(request, f"{upload.path}: {exc}", messages.WARNING)
        if count:
            self.message_user(request, f"{count} upload(s) {done}.", messages.SUCCESS)

    # -- the review queue ----------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        workspace = ReviewWorkspace(self)
        view = self.admin_site.admin_view
        return [
            path("review/", view(workspace.queue), name="moderation_upload_review"),
            path(
                "review/<int:pk>/", view(workspace.item), name="moderation_upload_review_item"
            ),
            path("review/group/", view(workspace.group), name="moderation_upload_review_group"),
            *super().get_urls(),
        ]


@admin.register(BannedFingerprint)
class BannedFingerprintAdmin(AuditedHistory, admin.ModelAdmin):
    audit_field = "fingerprint"
    list_display = (
        "thumbnail",
        "__str__",
        "bank",
        "category",
        "source",
        "active",
        "matching",
        "added_by",
        "created_at",
    )
    list_filter = ("bank", "active", "category", "source")
    search_fields = ("pdq", "phash", "dhash", "sha256", "reason")
    list_select_related = ("added_by", "bank")
    actions = ["deactivate", "reactivate"]
    fields = (
        "preview",
        "category",
        "reason",
        "active",
        "source",
        "source_upload",
        "matching",
        "pdq",
        "pdq_quality",
        "phash",
        "dhash",
        "sha256",
        "frame",
        "algorithm_versions",
        "added_by",
        "created_at",
        "updated_at",
    )
    readonly_fields = tuple(f for f in fields if f not in ("category", "reason"))

    @admin.display(description="image")
    def thumbnail(self, banned: BannedFingerprint) -> str:
        if not banned.reference_name:
            return "pasted hash"
        return image_tag("reference", banned.pk, alt="banned reference")

    @admin.display(description="matches")
    def matching(self, banned: BannedFingerprint) -> str:
        if selectors.banned_low_detail(rows=[banned]):
            return "exact copies only (too plain to match edited copies)"
        if banned.features:
            return "edited copies (hashes and local features)"
        return "edited copies (hashes only)"

    @admin.display(description="image")
    def preview(self, banned: BannedFingerprint) -> str:
        return self.thumbnail(banned)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = BanForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            common = {
                "category": data["category"],
                "reason": data["reason"],
                "actor": moderator(request),
            }
            try:
                if data["image"]:
                    rows = services.banned_add_image(data=data["image"].read(), **common)
                else:
                    rows = [
                        services.banned_add_hashes(
                            hashes=form.hashes(), pdq_quality=data["pdq_quality"], **common
                        )
                    ]
            except (ImageError, ValueError) as exc:
                form.add_error("image" if data["image"] else None, str(exc))
            else:
                ids = ", ".join(f"#{row.pk}" for row in rows)
                self.message_user(
                    request,
                    f"Banned as {ids}; every worker uses it from the next file on.",
                    messages.SUCCESS,
                )
                for row in selectors.banned_low_detail(rows=rows):
                    self.message_user(request, selectors.low_detail_message(row), messages.WARNING)
                return HttpResponseRedirect(
                    reverse("admin:moderation_bannedfingerprint_changelist")
                )
        return TemplateResponse(
            request,
            "admin/moderation/bannedfingerprint/ban.html",
            {
                **self.admin_site.each_context(request),
                "title": "Ban an image",
                "form": form,
                "opts": self.model._meta,
            },
        )

    def save_model(
        self, request: HttpRequest, obj: BannedFingerprint, form: object, change: bool
    ) -> None:
        services.banned_update(
            fingerprint_id=obj.pk,
            category=obj.category,
            reason=obj.reason,
            actor=moderator(request),
        )

    def delete_model(self, request: HttpRequest, obj: BannedFingerprint) -> None:
        services.banned_delete(fingerprint_ids=[obj.pk], actor=moderator(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        services.banned_delete(
            fingerprint_ids=list(queryset.values_list("pk", flat=True)), actor=moderator(request)
        )

    @admin.action(description="Deactivate (stop matching)", permissions=["change"])
    def deactivate(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = services.banned_set_active(
            fingerprint_ids=queryset.values_list("pk", flat=True),
            active=False,
            actor=moderator(request),
        )
        self.message_user(request, f"{count} banned fingerprint(s) deactivated.")

    @admin.action(description="Reactivate", permissions=["change"])
    def reactivate(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = services.banned_set_active(
            fingerprint_ids=queryset.values_list("pk", flat=True),
            active=True,
            actor=moderator(request),
        )
        self.message_user(request, f"{count} banned fingerprint(s) reactivated.")


@admin.register(AuditEvent)
class AuditEventAdmin(RecordAdmin):
    list_display = (
        "created_at",
        "action",
        "actor",
        "upload_link",
        "fingerprint_link",
        "detail",
        "note",
        "label",
    )
    list_filter = ("action", ("actor", admin.RelatedOnlyFieldListFilter), "label")
    list_select_related = ("actor", "upload", "fingerprint")
    search_fields = ("detail", "note", "upload__path", "actor__username")
    date_hierarchy = "created_at"

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # Links from an upload's or a ban's History, and from the dashboard.
        if lookup in ("upload__id__exact", "fingerprint__id__exact", "actor__username"):
            return True
        return super().lookup_allowed(lookup, value, request)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "export/",
                self.admin_site.admin_view(self.export_view),
                name="moderation_auditevent_export",
            ),
            *super().get_urls(),
        ]

    def export_view(self, request: HttpRequest) -> StreamingHttpResponse:
        """The events the list shows, with its filters and search, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        events = self.get_changelist_instance(request).get_queryset(request)
        response = StreamingHttpResponse(
            selectors.audit_csv(events=events.order_by("created_at", "id")),
            content_type="text/csv",
        )
        response["Content-Disposition"] = 'attachment; filename="audit-log.csv"'
        return response

    @admin.display(description="upload", ordering="upload")
    def upload_link(self, event: AuditEvent) -> str:
        if event.upload_id is None:
            return "—"
        url = reverse("admin:moderation_upload_change", args=[event.upload_id])
        return format_html('<a href="{}">#{} {}</a>', url, event.upload_id, event.upload)

    @admin.display(description="banned fingerprint", ordering="fingerprint")
    def fingerprint_link(self, event: AuditEvent) -> str:
        if event.fingerprint_id is None:
            return "—"
        url = reverse("admin:moderation_bannedfingerprint_change", args=[event.fingerprint_id])
        return format_html('<a href="{}">#{}</a>', url, event.fingerprint_id)



@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(RecordAdmin):
    list_display = ("name", "beat_at", "running", "waiting", "last_progress_at", "stall")
    readonly_fields = (
        "name",
        "hostname",
        "pid",
        "started_at",
        "beat_at",
        "running",
        "waiting",
        "last_progress_at",
        "stalled_since",
        "stall",
    )


@admin.register(Bank)
class BankAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "source",
        "action",
        "enabled",
        "limits",
        "fingerprints",
        "hits",
        "created_at",
    )
    list_filter = ("enabled", "source", "action")
    fields = (
        "name",
        "description",
        "source",
        "action",
        "pdq_limit",
        "phash_limit",
        "dhash_limit",
        "enabled",
        "created_at",
    )
    readonly_fields = ("enabled", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Bank | None = None) -> list[Any]:
        # A bank's name is how lists and the API find it; local is where bans made here go.
        return [*self.readonly_fields, "name"] if obj else list(self.readonly_fields)
    actions = ["enable", "disable", "export_csv", "export_hma"]

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name="moderation_bank_import",
            ),
            *super().get_urls(),
        ]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm("moderation.add_bannedfingerprint"):
            raise PermissionDenied
        form = HashListForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            if data["replace"] and not request.user.has_perm(
                "moderation.delete_bannedfingerprint"
            ):
                raise PermissionDenied
            job = services.import_job_create(
                chunks=data["file"].chunks(),
                bank=data["bank"],
                fmt=data["format"],
                replace=data["replace"],
                actor=moderator(request),
            )
            self.message_user(
                request, f"{job} queued; this page shows its progress.", messages.SUCCESS
            )
            return HttpResponseRedirect(reverse("admin:moderation_importjob_change", args=[job.pk]))
        return TemplateResponse(
            request,
            "admin/moderation/bank/import.html",
            {
                **self.admin_site.each_context(request),
                "title": "Import a hash list",
                "form": form,
                "opts": self.model._meta,
            },
        )

    def _export(
        self, request: HttpRequest, queryset: QuerySet, fmt: str
    ) -> StreamingHttpResponse | None:
        banks = list(queryset)
        if len(banks) != 1:
            self.message_user(request, "Choose one bank to export.", messages.WARNING)
            return None
        suffix = "csv" if fmt == "csv" else "txt"
        response = StreamingHttpResponse(
            services.bank_export(bank=banks[0].name, fmt=fmt), content_type="text/plain"
        )
        name = f"{banks[0].name}-{fmt}.{suffix}"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    @admin.action(description="Export as CSV (every hash)", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet) -> StreamingHttpResponse | None:
        return self._export(request, queryset, "csv")

    @admin.action(description="Export as an HMA file (PDQ and MD5)", permissions=["view"])
    def export_hma(self, request: HttpRequest, queryset: QuerySet) -> StreamingHttpResponse | None:
        return self._export(request, queryset, "hma")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(
                active_count=Count(
                    "fingerprints", filter=Q(fingerprints__active=True), distinct=True
                ),
                hit_count=Count(
                    "fingerprints__matches",
                    filter=Q(fingerprints__matches__voided=False),
                    distinct=True,
                ),
            )
        )

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # a bank goes with its fingerprints: disable it instead

    @admin.display(description="fingerprints", ordering="active_count")
    def fingerprints(self, bank: Bank) -> int:
        return bank.active_count  # type: ignore[attr-defined]

    @admin.display(description="hits", ordering="hit_count")
    def hits(self, bank: Bank) -> int:
        return bank.hit_count  # type: ignore[attr-defined]

    @admin.display(description="match limits")
    def limits(self, bank: Bank) -> str:
        return ", ".join(f"{name} ≤ {limit}" for name, limit in bank.limits()) or "the rule's"

    def save_model(self, request: HttpRequest, obj: Bank, form: Any, change: bool) -> None:
        services.bank_save(
            bank=obj, changed=form.changed_data if change else None, actor=moderator(request)
        )

    @admin.action(description="Enable (match its fingerprints)", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = services.bank_set_enabled(
            bank_ids=queryset.values_list("pk", flat=True), enabled=True, actor=moderator(request)
        )
        self.message_user(request, f"{count} bank(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable (stop matching)", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = services.bank_set_enabled(
            bank_ids=queryset.values_list("pk", flat=True), enabled=False, actor=moderator(request)
        )
        self.message_user(request, f"{count} bank(s) disabled.", messages.SUCCESS)


@admin.register(ImportJob)
class ImportJobAdmin(RecordAdmin):
    list_display = ("__str__", "state", "progress", "summary", "created_by", "created_at")
    list_filter = ("state",)
    fields = (
        "bank",
        "format",
        "replace",
        "state",
        "progress",
        "summary",
        "problem_lines",
        "created_by",
        "created_at",
        "finished_at",
    )
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("moderation.add_bannedfingerprint")

    @admin.display(description="progress")
    def progress(self, job: ImportJob) -> str:
        return f"{job.lines_done:,} of {job.lines_total:,} lines"

    @admin.display(description="bad lines")
    def problem_lines(self, job: ImportJob) -> str:
        return format_html_join("", "<div>{}</div>", ((line,) for line in job.problems)) or "—"


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Clients of the HTTP API: made here (the secret is shown once), revoked, never edited."""

    fields = ("name", "scope", "prefix", "created_by", "created_at", "last_used_at", "revoked_at")
    list_display = fields
    list_filter = ("scope",)
    readonly_fields = fields
    actions = ["revoke"]

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # revoked tokens stay, as the audit log names them

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ApiTokenForm(request.POST or None)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta}
        if request.method == "POST" and form.is_valid():
            token, secret = services.apitoken_create(
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
                actor=moderator(request),
            )
            response = TemplateResponse(
                request,
                "admin/moderation/apitoken/created.html",
                {**context, "title": "API token made", "token": token, "secret": secret},
            )
            response["Cache-Control"] = "no-store"
            return response
        return TemplateResponse(
            request,
            "admin/moderation/apitoken/add.html",
            {**context, "title": "Make an API token", "form": form},
        )

    @admin.action(description="Revoke (refuse from now on)", permissions=["add"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = services.apitoken_revoke(
            token_ids=queryset.values_list("pk", flat=True), actor=moderator(request)
        )
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


@admin.register(RetroCheck)
class RetroCheckAdmin(RecordAdmin):
    """New bans checked against past clean uploads, with their progress."""

    list_display = ("__str__", "state", "progress", "found", "summary", "created_at")
    list_filter = ("state",)
    fields = ("state", "progress", "found", "bans", "summary", "created_at", "finished_at")
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("moderation.view_upload")

    @admin.display(description="progress")
    def progress(self, job: RetroCheck) -> str:
        return f"{job.done} of {job.total} uploads" if job.total else "—"
