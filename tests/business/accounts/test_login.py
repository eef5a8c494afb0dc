"""Sign-in pages and login throttling per username and client address."""

import pytest

from tests.business.chat.factories import PASSWORD, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _throttle(settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_FAILURE_WINDOW = 60
    settings.LOGIN_LOCKOUT = 120
    # Each test its own cache namespace: no cache.clear(), which on Redis would empty the whole database.
    import uuid

    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": uuid.uuid4().hex},
    }


@pytest.fixture
def user():
    return make_user("lia")


def login(client, password, *, address="10.0.0.1", path="/accounts/login/", username="lia"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_the_chat_page_sends_anonymous_users_to_sign_in(client):
    response = client.get("/chat/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/chat/"


def test_signing_in_and_out(client, user):
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b'name="password"' in page.content
    response = login(client, PASSWORD)
    assert (response.status_code, response["Location"]) == (302, "/chat/")
    assert client.get("/chat/").status_code == 200
    assert client.get("/accounts/logout/").status_code == 405  # sign-out is a POST (no CSRF-able GET)
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/chat/").status_code == 302


def test_a_wrong_password_says_so(client, user):
    response = login(client, "wrong")
    assert response.status_code == 200
    assert b"correct username and password" in response.content


def test_repeated_failures_lock_that_username_from_that_address(client, user):
    for _ in range(3):
        login(client, "wrong")
    locked = login(client, PASSWORD)
    assert locked.status_code == 200
    assert b"Too many failed sign-in attempts. Try again in 2 minutes." in locked.content
    assert "_auth_user_id" not in client.session
    # Another address, or another username from this one, is not locked.
    assert login(client, PASSWORD, address="10.0.0.2").status_code == 302


def test_a_success_resets_the_count(client, user):
    for _ in range(2):
        login(client, "wrong")
    assert login(client, PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(2):
        login(client, "wrong")
    assert login(client, PASSWORD).status_code == 302


def test_the_admin_sign_in_is_throttled_too(client):
    make_user("boss", is_staff=True, is_superuser=True)
    for _ in range(3):
        login(client, "wrong", path="/admin/login/", username="boss")
    locked = login(client, PASSWORD, path="/admin/login/", username="boss")
    assert b"Too many failed sign-in attempts" in locked.content
