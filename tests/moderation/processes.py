"""Real worker, watcher and embedded-mode processes for the pipeline tests."""

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The URL of the database this test process uses, for child processes to share."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def wait_for(predicate: Callable[[], object], *, timeout: float = 60, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def children(pid: int) -> list[int]:
    """The processes ``pid`` started: a Celery worker's pool."""
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return [int(child) for child in listed.read().split()]


class Process:
    """A child process whose output goes to a log file that tests can read and show."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], log_dir: Path, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.popen = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log()}")
            return text in self.log()

        wait_for(seen, timeout=timeout, what=f"{text!r} in the {self.name} log")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


class Stack:
    """The processes of one deployment sharing a data directory, database and broker."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str,
        broker_url: str,
        root: Path = ROOT,
        **extra: str,
    ) -> None:
        """``root``: the code the processes run (a benchmark's baseline: an older commit's)."""
        self.data_dir = data_dir
        self.root = root
        self.env = {
            **os.environ,
            "HASHGUARD_DATA_DIR": str(data_dir),
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "DJANGO_SECRET_KEY": "pipeline-tests",
            "HASHGUARD_STABLE_SECONDS": "0.5",
            "HASHGUARD_RESCAN_SECONDS": "3",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
        self.processes: list[Process] = []

    def start(self, name: str, *args: str) -> Process:
        process = Process(name, [sys.executable, *args], self.env, self.data_dir, self.root)
        self.processes.append(process)
        return process

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env=self.env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )

    def manage_in_terminal(self, *args: str, timeout: float = 120) -> tuple[int, str]:
        """Run a command with a terminal for its stderr, as a person at a shell would."""
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        process = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env=self.env,
            stdout=terminal,
            stderr=terminal,
        )
        os.close(terminal)
        output = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the command has exited
                break
            if not chunk:
                break
            output += chunk
        os.close(controller)
        return process.wait(timeout=max(1, deadline - time.monotonic())), output.decode(
            errors="replace"
        )

    def worker(self, concurrency: int = 1, timeout: float = 60) -> Process:
        process = self.start(
            "worker",
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            str(concurrency),
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        )
        process.wait_for_log("ready.", timeout=timeout)
        return process

    def watcher(self) -> Process:
        process = self.start("watcher", "manage.py", "watch")
        process.wait_for_log("watching")
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()[-4000:]}" for p in self.processes)
