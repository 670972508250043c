"""The moderators' review workspace in the admin: the queue a moderator is handed, one
upload at a time beside what it matched, decisions that cannot override a colleague's,
and group decisions. Registered by UploadAdmin (moderation/admin.py)."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.admin import ModelAdmin
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Min, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme, urlencode

from hashes.errors import ImageError
from moderation import files, selectors, services
from moderation.explain import explain
from moderation.forms import ReviewDecisionForm, policy_labels
from moderation.models import Bank, Category, Match, Upload

State = Upload.State
AGES = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7)}
STAGES = [*Match.Stage.choices, ("held", "could not be checked (held)")]
PAGE = 50
GROUP_LIMIT = 500  # uploads one group decision takes at most


@dataclass(frozen=True)
class Filters:
    bank: str = ""
    category: str = ""
    ban: str = ""
    stage: str = ""
    age: str = ""

    @classmethod
    def of(cls, request: HttpRequest) -> "Filters":
        return cls(**{name: request.GET.get(name, "") for name in cls.__dataclass_fields__})

    def apply(self, queue: QuerySet) -> QuerySet:
        if self.bank:
            queue = queue.filter(matches__fingerprint__bank__name=self.bank)
        if self.category:
            queue = queue.filter(matches__fingerprint__category=self.category)
        if self.ban.isdigit():
            queue = queue.filter(matches__fingerprint_id=int(self.ban))
        if self.stage == "held":
            queue = queue.filter(state=State.HELD)
        elif self.stage:
            queue = queue.filter(matches__stage=self.stage)
        if self.age in AGES:
            queue = queue.filter(decided_at__lte=timezone.now() - AGES[self.age])
        return queue.distinct() if any((self.bank, self.category, self.ban, self.stage)) else queue

    def query(self) -> str:
        return urlencode({k: v for k, v in self.__dict__.items() if v})


def _actor(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _images(match: Match) -> dict[str, Any]:
    reference = (
        match.fingerprint if match.fingerprint and match.fingerprint.reference_name else None
    )
    return {
        "match": match,
        "why": explain(match),
        "reference": reference,
        "distances": ", ".join(f"{k} {v}" for k, v in sorted(match.distances.items())) or "—",
    }


def _item(upload: Upload) -> dict[str, Any]:
    return {"upload": upload, "matches": [_images(match) for match in upload.matches.all()]}


def _waiting_counts(queue: QuerySet, actor: User) -> dict[str, Any]:
    now = timezone.now()
    oldest = queue.aggregate(oldest=Min("decided_at"))["oldest"]
    held = queue.filter(claim_expires_at__gt=now).exclude(claimed_by=actor).count()
    return {"waiting": queue.count(), "oldest": oldest, "held_by_others": held}


class ReviewWorkspace:
    """The views; ``model_admin`` is UploadAdmin, for the admin's context and perms."""

    def __init__(self, model_admin: ModelAdmin) -> None:
        self.model_admin = model_admin
        self.site = model_admin.admin_site

    def _check(self, request: HttpRequest) -> None:
        if not request.user.has_perm("moderation.review_upload"):
            raise PermissionDenied

    def _context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        return {
            **self.site.each_context(request),
            "title": title,
            "opts": Upload._meta,
            "labels": policy_labels()[1:],
            "banks": Bank.objects.order_by("name").values_list("name", flat=True),
            "categories": Category.choices,
            "stages": STAGES,
            "ages": [("1h", "over an hour"), ("1d", "over a day"), ("7d", "over a week")],
        }

    # -- the queue ---------------------------------------------------------------------

    def queue(self, request: HttpRequest) -> HttpResponse:
        self._check(request)
        if request.method == "POST":
            form = ReviewDecisionForm(request.POST)
            if form.is_valid():
                self._decide(request, form)
            else:
                messages.error(request, "Choose Confirm or Release for an upload in the queue.")
            return HttpResponseRedirect(request.get_full_path())
        for line in selectors.workers_in_trouble():
            messages.warning(request, line.capitalize())
        filters = Filters.of(request)
        queue = filters.apply(selectors.review_queue())
        actor = _actor(request)
        context = self._context(request, "Review queue")
        if request.GET.get("view") == "all":
            # Everything waiting, page by page, for a lead's overview; nothing is claimed.
            page = Paginator(queue, PAGE).get_page(request.GET.get("page"))
            items = [_item(upload) for upload in page.object_list]
            context.update(page=page)
        else:
            batch = services.review_claim(actor=actor, queue=queue)
            by_id = {upload.pk: upload for upload in selectors.review_queue().filter(pk__in=batch)}
            items = [_item(by_id[pk]) for pk in batch if pk in by_id]
        context.update(
            items=items,
            filters=filters,
            query=filters.query(),
            viewing_all=request.GET.get("view") == "all",
            lease_minutes=max(1, round(settings.HASHGUARD_REVIEW_LEASE_SECONDS / 60)),
            **_waiting_counts(queue, actor),
        )
        return TemplateResponse(request, "admin/moderation/upload/review.html", context)

    # -- one upload --------------------------------------------------------------------

    def item(self, request: HttpRequest, pk: int) -> HttpResponse:
        self._check(request)
        upload = get_object_or_404(
            Upload.objects.prefetch_related("matches__fingerprint__bank"), pk=pk
        )
        actor = _actor(request)
        services.review_renew(actor=actor)  # still at work
        filters = Filters.of(request)
        batch = [
            upload_id
            for upload_id in filters.apply(selectors.review_queue())
            .filter(claimed_by=actor, claim_expires_at__gt=timezone.now())
            .order_by("decided_at", "id")
            .values_list("pk", flat=True)
        ]
        query = filters.query()
        if request.method == "POST":
            form = ReviewDecisionForm({**request.POST.dict(), "upload": pk})
            ok, message = self._decide(request, form, quiet=True)
            next_url = self._next_url(batch, pk, query)
            if request.headers.get("Accept", "").startswith("application/json"):
                return JsonResponse(
                    {"ok": ok, "message": message, "next": next_url}, status=200 if ok else 409
                )
            messages.add_message(request, messages.SUCCESS if ok else messages.WARNING, message)
            return HttpResponseRedirect(next_url if ok else request.get_full_path())
        position = batch.index(pk) if pk in batch else None
        context = self._context(request, f"Review upload #{pk}")
        context.update(
            item=_item(upload),
            decidable=upload.state in (State.QUARANTINED, State.HELD, State.REVIEW),
            position=None if position is None else position + 1,
            batch_size=len(batch),
            previous_url=self._url(batch[position - 1], query) if position else None,
            next_url=self._next_url(batch, pk, query),
            queue_url=reverse("admin:moderation_upload_review") + (f"?{query}" if query else ""),
            groups=self._groups(upload),
            query=query,
        )
        return TemplateResponse(request, "admin/moderation/upload/review_item.html", context)

    def _url(self, pk: int, query: str) -> str:
        url = reverse("admin:moderation_upload_review_item", args=[pk])
        return f"{url}?{query}" if query else url

    def _next_url(self, batch: list[int], pk: int, query: str) -> str:
        later = batch[batch.index(pk) + 1 :] if pk in batch else batch
        if later:
            return self._url(later[0], query)
        return reverse("admin:moderation_upload_review") + (f"?{query}" if query else "")

    def _groups(self, upload: Upload) -> list[dict[str, Any]]:
        """For each ban this upload matched: the waiting uploads that matched it too, each
        with the state this page shows it in, sent back with a group decision."""
        groups = []
        for match in upload.matches.all():
            if match.fingerprint_id is None or match.voided:
                continue
            waiting = list(
                selectors.waiting_for_ban(fingerprint_id=match.fingerprint_id).order_by(
                    "decided_at", "id"
                )[:GROUP_LIMIT]
            )
            if len(waiting) > 1:
                groups.append(
                    {"ban": match.fingerprint_id, "uploads": [(u.pk, u.seen()) for u in waiting]}
                )
        return groups

    # -- decisions ---------------------------------------------------------------------

    def _decide(
        self, request: HttpRequest, form: ReviewDecisionForm, *, quiet: bool = False
    ) -> tuple[bool, str]:
        if not form.is_valid():
            message = "Choose a decision for this upload."
            if not quiet:
                messages.error(request, message)
            return False, message
        data = form.cleaned_data
        upload = data["upload"]
        decision = data["decision"]
        act = services.upload_confirm if decision == "confirm" else services.upload_release
        options = {"allow_copies": True} if decision == "allow" else {}
        try:
            act(
                upload_id=upload.pk,
                actor=_actor(request),
                seen=data["seen"],
                note=data["note"],
                label=data["label"],
                **options,
            )
        except (services.ActionRefused, ImageError, files.UnsafePath) as exc:
            message = f"{upload.path}: {exc}"
            if not quiet:
                messages.warning(request, message)
            return False, message
        done = {
            "confirm": "confirmed",
            "release": "released",
            "allow": "released; their exact copies pass the bans they matched from now on",
        }[decision]
        message = f"{upload.path} {done}."
        if not quiet:
            messages.success(request, f"1 upload(s) {done}.")
        return True, message

    def group(self, request: HttpRequest) -> HttpResponse:
        """Confirm every waiting upload that matched one ban, as many as the page said."""
        self._check(request)
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:moderation_upload_review"))
        seen = {
            int(key.removeprefix("seen-")): str(request.POST[key])
            for key in request.POST
            if key.startswith("seen-") and key.removeprefix("seen-").isdigit()
        }
        try:
            count, refused = services.upload_confirm_group(
                fingerprint_id=int(request.POST["ban"]),
                seen=seen,
                actor=_actor(request),
                note=request.POST.get("note", "")[:2000],
            )
        except (KeyError, ValueError):
            messages.error(request, "Say which ban, and which uploads the page showed.")
        else:
            if count:
                messages.success(request, f"{count} upload(s) confirmed.")
            for reason in refused[:20]:
                messages.warning(request, reason)
        back = request.POST.get("next", "")
        if not (back.startswith("/admin/") and url_has_allowed_host_and_scheme(back, None)):
            back = reverse("admin:moderation_upload_review")
        return HttpResponseRedirect(back)
