from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from moderation import services
from moderation.models import ApiToken


class Command(BaseCommand):
    help = "Make, list and revoke the API's client tokens."

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="Make a token; its secret is shown once.")
        create.add_argument("name", help="Who uses it, e.g. the service's name.")
        create.add_argument(
            "--scope",
            choices=ApiToken.Scope.values,
            default=ApiToken.Scope.LOOKUP,
            help="lookup (the default): look up hashes and images; write: also add hashes.",
        )
        actions.add_parser("list", help="Every token, without its secret.")
        revoke = actions.add_parser("revoke", help="Refuse a token from now on.")
        revoke.add_argument("name")

    def handle(self, *args, **options) -> None:
        action = options["action"]
        if action == "create":
            try:
                token, secret = services.apitoken_create(
                    name=options["name"], scope=options["scope"], actor=None
                )
            except ValidationError as exc:
                raise CommandError("; ".join(exc.messages)) from None
            self.stderr.write(f"token {token.name} ({token.scope}); keep it, it is shown once:")
            self.stdout.write(secret)
        elif action == "list":
            for token in ApiToken.objects.all():
                state = f"revoked {token.revoked_at:%Y-%m-%d}" if token.revoked_at else "live"
                used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
                self.stdout.write(
                    f"{token.name}\t{token.scope}\t{token.prefix}…\t{state}\tlast used {used}"
                )
        else:
            ids = ApiToken.objects.filter(name=options["name"]).values_list("pk", flat=True)
            if not ids:
                raise CommandError(f"There is no token named {options['name']!r}.")
            if not services.apitoken_revoke(token_ids=ids, actor=None):
                raise CommandError(f"Token {options['name']} was revoked already.")
            self.stdout.write(f"token {options['name']} revoked")
