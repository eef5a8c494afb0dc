"""Create the first admin user of this project, once.

The password comes from ``ADMIN_PASSWORD`` (project prefix first, see ``service_kit.env``) or is generated
and printed once: it is stored only as Django's password hash, so it cannot be shown again.
Running it again when a superuser exists changes nothing.
"""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction


class Command(BaseCommand):
    help = "Create the first superuser if none exists (password from the environment or generated)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=None)
        parser.add_argument("--email", default=None)
        parser.add_argument(
            "--env-prefix", default="", help="Project prefix of the environment variables, e.g. SLM_"
        )

    def _env(self, prefix: str, name: str) -> str:
        return os.environ.get(f"{prefix}{name}") or os.environ.get(name) or ""

    @transaction.atomic
    def handle(self, *args, **options):
        user_model = get_user_model()
        prefix = options["env_prefix"]
        if user_model.objects.filter(is_superuser=True).exists():
            self.stdout.write("An admin user exists already; nothing to do.")
            return
        username = options["username"] or self._env(prefix, "ADMIN_USERNAME") or "admin"
        email = options["email"] or self._env(prefix, "ADMIN_EMAIL") or ""
        password = self._env(prefix, "ADMIN_PASSWORD")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(18)
        user = user_model(username=username, email=email, is_staff=True, is_superuser=True)
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError(f"{prefix}ADMIN_PASSWORD is too weak: {' '.join(exc.messages)}") from None
        user.set_password(password)
        user.save()
        self.stdout.write(self.style.SUCCESS(f"Created admin user {username!r}."))
        if generated:
            # Printed once on purpose: this is the only time the password exists outside its hash.
            self.stdout.write(f"Its password (shown once, store it now): {password}")
