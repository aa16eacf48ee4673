"""One background job at a time per workspace: a command in its own process group, a lock, a log.

Files (under ``jobs_dir``): ``<name>.lock`` (JSON ``JobInfo``; present while a job may run, so
every server on this workspace sees "busy"), ``<name>.last`` (the most recent job), and
``<name>.mutex`` (``flock``-ed while the lock is checked and written). Under the job's own folder:
``log.txt`` (stdout + stderr), ``exit_code`` (written by a ``sh`` wrapper when the command ends, so
any process can read the outcome) and ``cancelled`` (written before a cancel signals the group).

A job runs in a new session (``start_new_session``): signals sent to the server do not reach it,
cancel reaches all of its children (``killpg``), and a crash in it cannot take the server down.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from maskformer.errors import UserError

# sh -c SCRIPT EXIT_FILE CMD...: run CMD, then record its exit status atomically in EXIT_FILE.
_WRAPPER = 'f="$0"; "$@"; code=$?; echo "$code" > "$f.tmp"; mv "$f.tmp" "$f"; exit "$code"'
STATES = ("idle", "running", "finished", "failed", "cancelled", "dead")


class JobBusyError(UserError):
    """Another job is running in this workspace."""


@dataclass(frozen=True)
class JobInfo:
    """A started job. ``pgid`` equals the wrapper's ``pid`` (it leads its own group)."""

    job_id: str
    label: str
    command: list[str]
    job_dir: str
    pid: int
    start_ticks: int | None  # the leader's start time in /proc: guards against pid reuse
    started: float

    @property
    def log_path(self) -> Path:
        return Path(self.job_dir) / "log.txt"


@dataclass(frozen=True)
class JobState:
    """What a job is doing.

    Attributes:
        state: one of ``STATES``: idle (no job yet), running, finished (exit 0), failed (another
            exit status), cancelled (by ``cancel``), dead (gone without an exit status: killed).
        info: the job (None when idle).
        returncode: the command's exit status when known.
        message: one line for people.
    """

    state: str
    info: JobInfo | None = None
    returncode: int | None = None
    message: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _read_info(path: Path) -> JobInfo | None:
    try:
        return JobInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # absent, or cut short by a crash: treated as no job


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when it does not exist."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process of process group ``pgid`` exists."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: signal 0 reports the group (zombies included)
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


class JobRunner:
    """Starts, watches and cancels the jobs of one workspace (one at a time).

    Safe to share between threads and between server processes on the same machine.

    Args:
        jobs_dir: where the lock files live (e.g. ``<workspace>/jobs``).
        name: the kind of job; one lock per name.
    """

    def __init__(self, jobs_dir: str | Path, name: str = "train"):
        self.dir = Path(jobs_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.lock_path = self.dir / f"{name}.lock"
        self.last_path = self.dir / f"{name}.last"
        self._procs: dict[int, subprocess.Popen] = {}  # children of this process, reaped here
        self._thread_lock = threading.Lock()

    @contextmanager
    def _mutex(self) -> Iterator[None]:
        with self._thread_lock, open(self.dir / f"{self.name}.mutex", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ start

    def start(
        self,
        command: Sequence[str],
        job_dir: str | Path,
        *,
        label: str = "",
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> JobInfo:
        """Run ``command`` in its own process group, output to ``<job_dir>/log.txt``.

        Raises:
            JobBusyError: a job of this runner's name is still running (in any process).
        """
        job_dir = Path(job_dir)
        with self._mutex():
            current = _read_info(self.lock_path)
            if current is not None and self._alive(current):
                when = time.strftime("%H:%M:%S", time.localtime(current.started))
                raise JobBusyError(
                    f"a {current.label or self.name} job is already running "
                    f"(started {when}, pid {current.pid}); wait for it or "
                    "cancel it"
                )
            job_dir.mkdir(parents=True, exist_ok=True)
            for stale in ("exit_code", "cancelled"):
                (job_dir / stale).unlink(missing_ok=True)
            with open(job_dir / "log.txt", "ab") as log:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", _WRAPPER, str(job_dir / "exit_code"), *map(str, command)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    cwd=cwd,
                    env=None if env is None else dict(env),
                )
            self._procs[proc.pid] = proc
            info = JobInfo(
                job_id=job_dir.name,
                label=label,
                command=[str(c) for c in command],
                job_dir=str(job_dir),
                pid=proc.pid,
                start_ticks=start_ticks(proc.pid),
                started=time.time(),
            )
            _write_json(job_dir / "job.json", asdict(info))
            _write_json(self.lock_path, asdict(info))
            _write_json(self.last_path, asdict(info))
        return info

    # ------------------------------------------------------------------ watch

    def _alive(self, info: JobInfo) -> bool:
        proc = self._procs.get(info.pid)
        if proc is not None and proc.poll() is not None:
            self._procs.pop(info.pid, None)  # reaped: no zombie left behind
        ticks = start_ticks(info.pid)
        if ticks is not None and info.start_ticks is not None and ticks != info.start_ticks:
            return False  # the pid now belongs to another process: ours is long gone
        return group_alive(info.pid)

    def current(self) -> JobInfo | None:
        """The job that holds the lock (possibly just ended), else the most recent one."""
        return _read_info(self.lock_path) or _read_info(self.last_path)

    def busy(self) -> bool:
        return self.state().running

    def state(self) -> JobState:
        """The current or most recent job's state; releases the lock of a job that ended."""
        info = self.current()
        if info is None:
            return JobState("idle", message="no job has run yet")
        if self._alive(info):
            return JobState("running", info, message="running")
        self._release(info)
        return self._outcome(info)

    def _release(self, info: JobInfo) -> None:
        with self._mutex():
            held = _read_info(self.lock_path)
            if held is not None and held.job_id == info.job_id and held.pid == info.pid:
                self.lock_path.unlink(missing_ok=True)

    def _outcome(self, info: JobInfo) -> JobState:
        job_dir = Path(info.job_dir)
        code = _exit_code(job_dir / "exit_code")
        if (job_dir / "cancelled").exists():
            return JobState("cancelled", info, code, "cancelled")
        if code == 0:
            return JobState("finished", info, 0, "finished")
        if code is not None:
            return JobState("failed", info, code, f"exited with status {code}")
        return JobState(
            "dead",
            info,
            None,
            "the job's process disappeared without an exit "
            "status (killed, or the machine restarted)",
        )

    def wait(self, timeout: float | None = None, poll_s: float = 0.5) -> JobState:
        """Block until the current job ends (or ``timeout`` seconds pass); returns its state."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.state()
            if not st.running or (end is not None and time.monotonic() >= end):
                return st
            time.sleep(poll_s)

    # ------------------------------------------------------------------ cancel

    def cancel(self, grace_s: float = 5.0) -> JobState:
        """SIGTERM the job's whole process group, then SIGKILL what is left after ``grace_s``."""
        info = _read_info(self.lock_path)
        if info is None or not self._alive(info):
            return self.state()
        (Path(info.job_dir) / "cancelled").write_text(str(time.time()))
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(info.pid, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + wait_s
            while self._alive(info) and time.monotonic() < end:
                time.sleep(0.05)
            if not self._alive(info):
                break
        return self.state()


def _exit_code(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
