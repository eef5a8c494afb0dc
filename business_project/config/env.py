"""The one place the business app reads its environment; the rest imports ``env`` and paths from here."""

from pathlib import Path

from service_kit.env import ProjectEnv

BASE_DIR = Path(__file__).resolve().parents[2]
ENV_PREFIX = "BUSINESS_"

env = ProjectEnv(prefix=ENV_PREFIX)
env.read_env_file(BASE_DIR / ".env")

# Files this process writes (SQLite database, filesystem broker, collected static files, secret key).
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var"))).resolve() / "business"
