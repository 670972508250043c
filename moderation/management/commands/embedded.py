import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from moderation import files

# A process that stops this often within RESTART_WINDOW seconds is not started again.
RESTARTS = 5
RESTART_WINDOW = 120.0


class Command(BaseCommand):
    help = (
        "Run hashguard on this machine: prepare the database, then start the admin, "
        "the watcher and a worker, and stop them all on Ctrl-C."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--concurrency",
            type=int,
            default=os.cpu_count() or 1,
            help="Worker processes (default: one per core).",
        )

    def handle(self, *args, **options) -> None:
        # The database, the queue's message files and the secret key are this user's
        # alone; the children inherit it.
        os.umask(0o077)
        os.chmod(settings.DATA_DIR, 0o700)
        files.ensure_directories()
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        login = self._ensure_admin()
        python = sys.executable
        manage = str(settings.BASE_DIR / "manage.py")
        address = f"{options['host']}:{options['port']}"
        commands = {
            "admin": [
                python,
                "-m",
                "gunicorn",
                "config.wsgi",
                "--bind",
                address,
                "--workers",
                "2",
                "--access-logfile",
                "-",
                # Its default control socket is one per user, shared between instances.
                "--no-control-socket",
            ],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(options["concurrency"]),
            ],
            "watcher": [python, manage, "watch"],
        }
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        children = {name: self._start(command) for name, command in commands.items()}
        # The banner comes once the admin answers, so the children's start-up messages
        # do not scroll it away.
        self._wait_for_port(options["host"], options["port"], stop, children)
        self.stdout.write(
            f"\nhashguard is running.\n"
            f"  Admin:      http://{address}/admin/\n"
            f"  Login:      {login}\n"
            f"  Watching:   {files.media_dir()}  (drop images here)\n"
            f"  Quarantine: {files.quarantine_dir()}\n"
            f"Press Ctrl-C to stop.\n"
        )
        self.stdout.flush()
        failed = self._supervise(children, commands, stop)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if failed:
            raise CommandError(
                f"the {failed} stopped {RESTARTS} times within {RESTART_WINDOW:g} s (last exit "
                f"code {children[failed].returncode}); stopped everything else. See its "
                "messages above."
            )
        self.stdout.write("hashguard stopped.")

    @staticmethod
    def _start(command: list[str]) -> subprocess.Popen:
        return subprocess.Popen(command, cwd=settings.BASE_DIR, start_new_session=True)

    def _supervise(
        self,
        children: dict[str, subprocess.Popen],
        commands: dict[str, list[str]],
        stop: threading.Event,
    ) -> str | None:
        """Start again each process that stops (a worker that found itself stalled exits
        for this), until stopped; the name of one that keeps stopping, if one does."""
        started: dict[str, list[float]] = {name: [] for name in children}
        while not stop.wait(0.5):
            for name, child in children.items():
                if child.poll() is None:
                    continue
                now = time.monotonic()
                started[name] = [t for t in started[name] if now - t < RESTART_WINDOW]
                if len(started[name]) >= RESTARTS:
                    return name
                self.stderr.write(
                    f"the {name} stopped (exit code {child.returncode}); starting it again"
                )
                # Its pool processes, if any were left, go with it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                children[name] = self._start(commands[name])
                started[name].append(now)
        return None

    @staticmethod
    def _wait_for_port(
        host: str, port: int, stop: threading.Event, children: dict[str, subprocess.Popen]
    ) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not stop.is_set():
            if any(child.poll() is not None for child in children.values()):
                return
            try:
                socket.create_connection((host, port), timeout=1).close()
                time.sleep(1)  # let the worker and the watcher finish their own start
                return
            except OSError:
                time.sleep(0.2)

    def _ensure_admin(self) -> str:
        users = get_user_model().objects
        if users.filter(is_superuser=True).exists():
            return (
                "Log in with your admin account "
                "(forgot it? python manage.py changepassword USERNAME)."
            )
        password = secrets.token_urlsafe(12)
        users.create_superuser("admin", email="", password=password)
        return (
            f"Log in as admin / {password} (shown once; change it with "
            "python manage.py changepassword admin)."
        )
