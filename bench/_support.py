"""Helpers shared by the benchmarks in ``bench/``: a throwaway database, a real gunicorn process of the
SLM, the ``wrk`` load generator, and small statistics.

Everything here talks to loopback addresses only, and every wait is bounded in time.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
# The loopback process helpers are the ones the live-SLM test fixture uses: one copy.
sys.path.insert(0, str(REPO_DIR))
from tests.fixtures.live_slm import base_process_env, free_port, wait_for_http  # noqa: E402 - after the path insert above

POSTGRES_SERVER_URL = os.environ.get("AUTOBOT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 15


# --- small things ----------------------------------------------------------------------------------------


def say(message: str = "") -> None:
    print(message, flush=True)


def load_average() -> str:
    """The first three fields of ``/proc/loadavg`` (the machine is shared: note how busy it was)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of live processes so far (``/proc/<pid>/stat``); gone ones count 0."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / ticks


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_kib(pid: int) -> int:
    """Resident memory of a live process (``VmRSS`` of ``/proc/<pid>/status``), KiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_files(pid: int) -> int:
    """How many file descriptors a live process holds (sockets included); 0 when it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``wanted`` (never past the hard limit; children
    inherit it). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (no interpolation: a p95 of 100 samples is the 95th)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5 - 1e-9)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- database --------------------------------------------------------------------------------------------


def _postgres_reachable(server_url: str) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    try:
        with psycopg.connect(f"{server_url}/postgres", connect_timeout=3) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@dataclass
class ThrowawayDatabase:
    """A fresh database for one run: PostgreSQL (``autobot_bench_<hex>``) when the server answers, else a
    SQLite file in ``var_dir``. ``drop()`` removes it; it is safe to call more than once."""

    var_dir: Path
    prefer_postgres: bool = True
    server_url: str = POSTGRES_SERVER_URL
    engine: str = ""
    name: str = ""
    url: str = ""

    def create(self) -> ThrowawayDatabase:
        if self.prefer_postgres and _postgres_reachable(self.server_url):
            import psycopg

            self.engine = "postgresql"
            self.name = f"autobot_bench_{secrets.token_hex(4)}"
            with psycopg.connect(f"{self.server_url}/postgres", autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{self.name}"')
            self.url = f"{self.server_url}/{self.name}"
        else:
            self.engine = "sqlite"
            path = self.var_dir / "bench.sqlite3"
            self.name = str(path)
            self.url = f"sqlite:///{path}"
        return self

    def scalar(self, sql: str) -> int:
        """One value of a read-only query, outside Django (the bench process never imports it)."""
        if self.engine == "postgresql":
            import psycopg

            with psycopg.connect(self.url, connect_timeout=5) as connection:
                return connection.execute(sql).fetchone()[0]
        with sqlite3.connect(self.name, timeout=20) as connection:
            return connection.execute(sql).fetchone()[0]

    def rows(self, sql: str) -> list[tuple]:
        """Every row of a read-only query, outside Django."""
        if self.engine == "postgresql":
            import psycopg

            with psycopg.connect(self.url, connect_timeout=5) as connection:
                return connection.execute(sql).fetchall()
        with sqlite3.connect(self.name, timeout=20) as connection:
            return connection.execute(sql).fetchall()

    def backend_pids(self) -> list[int]:
        """The PostgreSQL server processes serving this database, other than the asking one."""
        if self.engine != "postgresql":
            return []
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        return [row[0] for row in rows]

    def drop(self) -> None:
        if self.engine == "postgresql" and self.name:
            import psycopg

            with psycopg.connect(f"{self.server_url}/postgres", autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.name = ""


# --- the SLM process -------------------------------------------------------------------------------------


@dataclass
class SlmInstance:
    """One SLM configuration (database, var dir, keys) and, once ``start``ed, its gunicorn process."""

    database_url: str
    var_dir: Path
    worker_class: str = "gthread"
    workers: int = 2
    threads: int = 4
    # Longer than a benchmark's grace period, so connections held idle at the end stay open.
    keep_alive_seconds: int = 10
    port: int = field(default_factory=free_port)
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = base_process_env()
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "slm_project.config.settings.base",
                "SLM_VAR_DIR": str(self.var_dir),
                "SLM_DATABASE_URL": self.database_url,
                "SLM_SECRET_KEY": self.secret_key,
                "SLM_ALLOWED_HOSTS": "127.0.0.1,localhost",
            }
        )
        return env

    def manage(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "manage_slm.py", *args],
            cwd=REPO_DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"manage_slm.py {args[0]} failed ({result.returncode}):\n{result.stderr[-4000:]}"
            )
        return result

    def python(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``python *args`` in the repo with this instance's environment (for a set-up script)."""
        result = subprocess.run(
            [sys.executable, *args],
            cwd=REPO_DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"python {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr[-4000:]}"
            )
        return result

    def gunicorn_args(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "slm_project.config.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            self.worker_class,
            "--workers",
            str(self.workers),
            "--no-control-socket",
            "--keep-alive",
            str(self.keep_alive_seconds),
            "--log-level",
            "warning",
        ]
        if self.worker_class == "gthread":
            args += ["--threads", str(self.threads)]
        # No --access-logfile: gunicorn writes no access log without it.
        return args

    def start(self) -> None:
        # WhiteNoise warns on every worker start when STATIC_ROOT is missing; nothing is collected here.
        (self.var_dir / "slm" / "static").mkdir(parents=True, exist_ok=True)
        self.log_path = self.var_dir / "gunicorn.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.gunicorn_args(),
                cwd=REPO_DIR,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_http(f"{self.url}/healthz", timeout=START_TIMEOUT_SECONDS, process=self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"the SLM did not start; log:\n{self.log_tail()}") from None

    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        return [self.process.pid, *self.worker_pids()] if self.process is not None else []

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in children.split()]

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None


def make_var_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_dir(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


# --- wrk -------------------------------------------------------------------------------------------------

WRK_RESULT_MARKER = "WRK_RESULT "
WRK_THREAD_DONE_MARKER = "WRK_THREAD_DONE"


def ensure_wrk() -> str:
    """The path of ``wrk``, installing Debian's package when it is missing and we may (root, apt-get)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("wrk is missing: installing Debian's wrk package")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=300, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=True, timeout=300, capture_output=True
        )
        found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is needed (Debian package 'wrk'): apt-get install -y wrk")
    return found


def run_wrk(
    *,
    url: str,
    script: Path,
    script_args: list[str],
    connections: int,
    duration_seconds: int,
    threads: int = 1,
    timeout_seconds: int = 10,
) -> dict:
    """Run ``wrk`` with a Lua script whose ``done()`` prints ``WRK_RESULT <json>``; that object, parsed.

    ``duration_seconds`` is an upper bound: a script may stop its thread early (``wrk.thread:stop()``)
    and say so on stderr with a ``WRK_THREAD_DONE`` line; once every thread has, wrk is sent SIGINT,
    which ends its wait for the full duration and makes it report (and call ``done()``) at once.
    """
    if not url.startswith(("http://127.", "http://localhost")):
        raise ValueError("load goes to loopback addresses only")
    command = [
        ensure_wrk(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={duration_seconds}s",
        f"--timeout={timeout_seconds}s",
        f"--script={script}",
        url,
        "--",
        *script_args,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A hard bound whatever happens: wrk is killed after its duration plus a margin.
    killer = threading.Timer(duration_seconds + timeout_seconds + 60, process.kill)
    killer.start()
    try:
        stderr_lines: list[str] = []
        finished_threads = 0
        for line in process.stderr:  # ends when wrk exits
            if line.startswith(WRK_THREAD_DONE_MARKER):
                finished_threads += 1
                if finished_threads == threads and process.poll() is None:
                    process.send_signal(signal.SIGINT)
            else:
                stderr_lines.append(line)
        stdout = process.stdout.read()
        returncode = process.wait(timeout=30)
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    for line in stdout.splitlines():
        if line.startswith(WRK_RESULT_MARKER):
            return json.loads(line[len(WRK_RESULT_MARKER) :])
    stderr = "".join(stderr_lines)
    raise RuntimeError(f"wrk gave no result ({returncode}):\n{stdout[-2000:]}\n{stderr[-2000:]}")
