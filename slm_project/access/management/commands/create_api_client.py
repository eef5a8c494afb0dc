"""``manage_slm.py create_api_client --name business --scope discovery:read --scope nodes:read``

Prints the token once, as the last line of output; only its hash is stored.
"""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from rest_framework.exceptions import APIException

from slm_project.access.choices import Scope
from slm_project.access.services import api_client_create


class Command(BaseCommand):
    help = "Create an API client (service account) and print its token once."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--scope", action="append", dest="scopes", choices=Scope.values, required=True)
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args, name, scopes, expires_in_days, **options):
        expires_at = None
        if expires_in_days is not None:
            expires_at = timezone.now() + timedelta(days=expires_in_days)
        try:
            client, token = api_client_create(name=name, scopes=scopes, expires_at=expires_at)
        except APIException as exc:
            raise CommandError(str(exc.detail)) from None
        self.stderr.write(f"Created API client {client.name!r} with scopes {', '.join(client.scopes)}.")
        self.stderr.write("Its token follows; it is shown only now.")
        self.stdout.write(token)
