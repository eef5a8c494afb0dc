import uuid

import pytest
from django.contrib.auth import get_user_model


@pytest.mark.django_db
def test_operators_have_uuid_keys():
    user = get_user_model().objects.create_user(username="ops", password="a-long-enough-password")
    assert isinstance(user.pk, uuid.UUID)
    assert str(user) == "ops"
