"""Scanning for a leaked secret (a "canary"): in a full database dump, in logs, in files.

Used by every test that proves a secret stays sealed: the vault's own and the enrollment's.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
from pathlib import Path

from django.conf import settings
from django.db import connection


def canary() -> str:
    return f"canary-{secrets.token_urlsafe(24)}"


def encodings(secret: str) -> dict[str, bytes]:
    """The forms in which a leaked secret would show up in a dump, a log or a file."""
    raw = secret.encode()
    return {
        "raw": raw,
        "base64": base64.b64encode(raw),
        "base64url": base64.urlsafe_b64encode(raw),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
    }


def assert_absent(secret: str, data: bytes, where: str) -> None:
    for form, encoded in encodings(secret).items():
        assert encoded not in data, f"the canary appears ({form}) in {where}"


def database_dump(directory: Path) -> bytes:
    """Every byte of the test database as the server would hand it to a backup."""
    database = connection.settings_dict
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        command = ["pg_dump", "--no-owner", "--no-privileges", "--dbname", database["NAME"]]
        for option, key in (("--host", "HOST"), ("--port", "PORT"), ("--username", "USER")):
            if database.get(key):
                command += [option, str(database[key])]
        result = subprocess.run(
            command,
            env=os.environ | {"PGPASSWORD": database.get("PASSWORD") or ""},
            capture_output=True,
            check=True,
            timeout=120,
        )
        return result.stdout
    with connection.cursor() as cursor:
        if connection.is_in_memory_db():
            # The test database lives in memory: VACUUM INTO writes its pages to a file as they are.
            copy = directory / "dump.sqlite3"
            cursor.execute("VACUUM INTO %s", [str(copy)])
            return copy.read_bytes()
        cursor.execute("PRAGMA wal_checkpoint(FULL)")
    files = [Path(database["NAME"]), Path(f"{database['NAME']}-wal")]
    return b"".join(path.read_bytes() for path in files if path.exists())


def assert_absent_in_tree(secret: str, root: Path) -> None:
    """No file below ``root`` holds the secret in any of its encodings."""
    for path in root.rglob("*"):
        if path.is_file():
            assert_absent(secret, path.read_bytes(), str(path))


def broker_contents() -> bytes:
    """Every message waiting in the Celery broker (the filesystem folders, or every Redis key)."""
    broker_url = settings.CELERY_BROKER_URL
    if broker_url.startswith("filesystem://"):
        folders = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        roots = {
            Path(folders["data_folder_in"]),
            Path(folders["data_folder_out"]),
            Path(folders["control_folder"]),
        }
        return b"".join(path.read_bytes() for root in roots for path in root.rglob("*") if path.is_file())
    import redis

    client = redis.Redis.from_url(broker_url)
    chunks = []
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"list":
            chunks += client.lrange(key, 0, -1)
        elif kind == b"string":
            chunks.append(client.get(key) or b"")
        elif kind == b"hash":
            chunks += [*client.hgetall(key).values()]
        elif kind == b"zset":
            chunks += client.zrange(key, 0, -1)
        elif kind == b"set":
            chunks += list(client.smembers(key))
    return b"".join(chunks)
