from django.db.models import Count

from slm_project.security.models import Credential


def credential_count_by_master_key() -> dict[str, int]:
    """How many stored values each master key id protects (ids in name order)."""
    rows = Credential.objects.order_by("master_key_id").values("master_key_id").annotate(count=Count("id"))
    return {row["master_key_id"]: row["count"] for row in rows}
