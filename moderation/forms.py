from django import forms
from django.conf import settings

from hashes.algorithms import parse_hash
from hashes.hashlists import FORMATS
from moderation.models import ApiToken, Category, ImagePreference, Upload


class BanForm(forms.Form):
    """Ban an image by uploading it, or by pasting its hashes."""

    image = forms.FileField(
        required=False,
        help_text="The banned image. Its fingerprints are computed and it is kept, privately, "
        "as the reference moderators see beside each match.",
    )
    pdq = forms.CharField(
        label="PDQ hash",
        required=False,
        max_length=80,
        help_text="64 hex characters, as shared by other platforms.",
    )
    pdq_quality = forms.IntegerField(
        label="PDQ quality",
        required=False,
        min_value=0,
        max_value=100,
        help_text="From the same source as the hash; 100 if not given.",
    )
    phash = forms.CharField(
        label="pHash",
        required=False,
        max_length=20,
        help_text="16 hex characters (imagehash's pHash).",
    )
    dhash = forms.CharField(
        label="dHash",
        required=False,
        max_length=20,
        help_text="16 hex characters (imagehash's dHash).",
    )
    category = forms.ChoiceField(choices=Category.choices, initial=Category.OTHER)
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def clean_image(self) -> object:
        image = self.cleaned_data.get("image")
        if image and image.size > settings.HASHGUARD_MAX_BYTES:
            raise forms.ValidationError("This file is larger than HASHGUARD_MAX_BYTES.")
        return image

    def _clean_hash(self, name: str) -> str:
        text = self.cleaned_data.get(name, "").strip()
        if not text:
            return ""
        try:
            return parse_hash(name, text)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_pdq(self) -> str:
        return self._clean_hash("pdq")

    def clean_phash(self) -> str:
        return self._clean_hash("phash")

    def clean_dhash(self) -> str:
        return self._clean_hash("dhash")

    def clean(self) -> dict:
        data = super().clean() or {}
        has_image = bool(data.get("image"))
        has_hash = any(data.get(name) for name in ("pdq", "phash", "dhash"))
        if has_image == has_hash and not self.errors:
            raise forms.ValidationError("Upload an image or paste hashes, not both or neither.")
        return data

    def hashes(self) -> dict[str, str]:
        return {n: self.cleaned_data[n] for n in ("pdq", "phash", "dhash") if self.cleaned_data[n]}


class FlagForm(forms.Form):
    category = forms.ChoiceField(choices=Category.choices, initial=Category.OTHER)
    reason = forms.CharField(required=False, max_length=500)


def policy_labels() -> list[tuple[str, str]]:
    return [("", "—"), *((label, label) for label in settings.HASHGUARD_POLICY_LABELS)]


class ReviewDecisionForm(forms.Form):
    upload = forms.ModelChoiceField(queryset=Upload.objects.all())
    decision = forms.ChoiceField(
        choices=[
            ("confirm", "Confirm quarantine"),
            ("release", "Release this file only"),
            ("allow", "Release, and let exact copies pass its bans from now on"),
        ]
    )
    # The upload as the page showed it (Upload.seen()): a decision on an out-of-date page
    # is refused rather than overriding a colleague's.
    seen = forms.CharField(max_length=100)
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)
    label = forms.ChoiceField(required=False, choices=policy_labels, label="Policy")


class HashListForm(forms.Form):
    file = forms.FileField(help_text="A hash list: HMA, threatexchange CSV, CSV or PDQ hasher.")
    bank = forms.SlugField(
        max_length=64, help_text="The bank to import into; made if it does not exist."
    )
    format = forms.ChoiceField(
        choices=[("auto", "Tell by content"), *((name, name) for name in FORMATS)],
        initial="auto",
    )
    replace = forms.BooleanField(
        required=False, help_text="Make the bank hold exactly this list: remove what it lacks."
    )


class ApiTokenForm(forms.Form):
    name = forms.SlugField(
        max_length=64,
        help_text="Who uses it: the calling service's name, in letters, digits and -.",
    )
    scope = forms.ChoiceField(choices=ApiToken.Scope.choices, initial=ApiToken.Scope.LOOKUP)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if ApiToken.objects.filter(name=name).exists():
            raise forms.ValidationError("A token of that name exists; revoke it or choose another.")
        return name


class ImagePreferenceForm(forms.ModelForm):
    class Meta:
        model = ImagePreference
        fields = ["blur", "greyscale", "reveal"]
        widgets = {"reveal": forms.RadioSelect}
