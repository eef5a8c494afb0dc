from django.db import models


class Role(models.TextChoices):
    """What a user may do. Superusers are admins whatever their stored role (``User.effective_role``)."""

    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer (read only)"


class Scope(models.TextChoices):
    """What a personal API token may do; never more than its owner's role allows."""

    CHAT_READ = "chat:read", "Read conversations, messages and their event streams"
    CHAT_WRITE = "chat:write", "Create conversations, send, stop and regenerate messages"
