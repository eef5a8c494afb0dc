"""``manage_business.py create_api_token --user alice --name laptop --scope chat:read --scope chat:write``

Prints the token once, as the last line of output (stdout; everything else goes to stderr), so it can
be captured with ``| tail -n 1 > file``; only its hash is stored.
"""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from rest_framework.exceptions import APIException

from business_project.accounts.choices import Scope
from business_project.accounts.models import User
from business_project.accounts.services import api_token_create


class Command(BaseCommand):
    help = "Create a personal API token for a user and print it once."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="username of the owner")
        parser.add_argument("--name", required=True)
        parser.add_argument("--scope", action="append", dest="scopes", choices=Scope.values, required=True)
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args, user, name, scopes, expires_in_days, **options):
        owner = User.objects.filter(username=user).first()
        if owner is None:
            raise CommandError(f"No user named {user!r}.")
        expires_at = None
        if expires_in_days is not None:
            if expires_in_days < 1:
                raise CommandError("--expires-in-days must be at least 1.")
            expires_at = timezone.now() + timedelta(days=expires_in_days)
        try:
            row, token = api_token_create(user=owner, name=name, scopes=scopes, expires_at=expires_at)
        except APIException as exc:
            raise CommandError(str(exc.detail)) from None
        self.stderr.write(
            f"Created token {row.name!r} for {owner.username!r} with scopes {', '.join(row.scopes)}."
        )
        self.stderr.write("The token follows; it is shown only now.")
        self.stdout.write(token)
