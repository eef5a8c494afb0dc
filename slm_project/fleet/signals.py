"""The role table follows the code registry after every migrate."""

from django.db.models.signals import post_migrate
from django.dispatch import receiver


@receiver(post_migrate)
def sync_role_registry(sender, **kwargs) -> None:
    if getattr(sender, "label", None) != "fleet":
        return
    from slm_project.fleet.services import role_registry_sync

    role_registry_sync()
