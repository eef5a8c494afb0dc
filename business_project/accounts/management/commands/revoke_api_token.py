"""``manage_business.py revoke_api_token --user alice --name laptop``: the token is refused from now on."""

from django.core.management.base import BaseCommand, CommandError

from business_project.accounts.models import ApiToken
from business_project.accounts.services import api_token_revoke


class Command(BaseCommand):
    help = "Revoke a user's live personal API token by name."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True)
        parser.add_argument("--name", required=True)

    def handle(self, *args, user, name, **options):
        row = ApiToken.objects.filter(user__username=user, name=name, revoked_at__isnull=True).first()
        if row is None:
            raise CommandError(f"{user!r} has no live token named {name!r}.")
        api_token_revoke(token=row)
        self.stdout.write(f"Revoked token {name!r} of {user!r}.")
