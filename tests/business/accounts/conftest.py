# The websocket auth tests open sockets whose middleware reads the database from asgiref's shared thread.
from tests.business.chat.conftest import _release_server_database_connections  # noqa: F401 - autouse fixture
