"""The job runner: own process group, log file, exit status, cancel (TERM then KILL), dead jobs,
and one job per workspace across runners and processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.jobs import JobBusyError, JobRunner, group_alive, start_ticks

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _wait_for(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_finished_job_log_exit_code_and_lock_release(tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    assert runner.state().state == "idle"
    code = "import sys; print('hello out'); print('hello err', file=sys.stderr)"
    info = runner.start([PY, "-c", code], tmp_path / "job1", label="test")
    st = runner.wait(timeout=30)
    assert st.state == "finished" and st.returncode == 0
    log = info.log_path.read_text()
    assert "hello out" in log and "hello err" in log
    assert not runner.lock_path.exists()  # released once seen finished
    assert runner.current().job_id == "job1"  # the last job is remembered
    assert json.loads((tmp_path / "job1" / "job.json").read_text())["pid"] == info.pid


def test_failed_job_reports_its_status(tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    runner.start([PY, "-c", "raise SystemExit(3)"], tmp_path / "j")
    st = runner.wait(timeout=30)
    assert (st.state, st.returncode) == ("failed", 3)


def test_own_process_group_and_session(tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    info = runner.start(["sleep", "30"], tmp_path / "j")
    try:
        assert os.getpgid(info.pid) == info.pid != os.getpgid(0)
        assert os.getsid(info.pid) == info.pid  # a new session: the server's signals miss it
    finally:
        runner.cancel(grace_s=2)


def test_one_job_at_a_time_across_runners_and_processes(tmp_path):
    a = JobRunner(tmp_path / "jobs")
    b = JobRunner(tmp_path / "jobs")  # another server thread / instance on the same workspace
    a.start(["sleep", "30"], tmp_path / "j1", label="fine-tune")
    try:
        with pytest.raises(JobBusyError, match="fine-tune job is already running"):
            b.start(["sleep", "1"], tmp_path / "j2")
        assert b.busy()
        code = (
            "from app.jobs import JobRunner; import sys; "
            f"sys.exit(0 if JobRunner({str(tmp_path / 'jobs')!r}).busy() else 1)"
        )
        other = subprocess.run([PY, "-c", code], cwd=ROOT, timeout=60, check=False)
        assert other.returncode == 0  # another process sees the lock and the live group
    finally:
        a.cancel(grace_s=2)
    assert not b.busy()
    b.start([PY, "-c", "pass"], tmp_path / "j2")
    assert b.wait(timeout=30).state == "finished"


def test_cancel_stops_the_whole_group(tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    pidfile = tmp_path / "child.pid"
    # The command starts a grandchild and waits for it, as the fine-tune job starts `train`.
    info = runner.start(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], tmp_path / "j")
    assert _wait_for(pidfile.exists)
    child = int(pidfile.read_text())
    assert _pid_alive(child)
    t0 = time.monotonic()
    st = runner.cancel(grace_s=5)
    assert st.state == "cancelled"
    assert time.monotonic() - t0 < 5  # SIGTERM was enough
    assert not _pid_alive(child) and not group_alive(info.pid)
    assert not runner.lock_path.exists()


def test_cancel_escalates_to_sigkill(tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    info = runner.start([PY, "-c", code], tmp_path / "j")
    assert _wait_for(ready.exists)
    t0 = time.monotonic()
    st = runner.cancel(grace_s=1.0)
    assert st.state == "cancelled"
    assert 0.9 < time.monotonic() - t0 < 10
    assert not group_alive(info.pid)


def test_killed_group_is_dead_and_frees_the_lock(tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    info = runner.start(["sleep", "60"], tmp_path / "j")
    os.killpg(info.pid, signal.SIGKILL)  # e.g. the OOM killer, or a user's kill -9
    assert _wait_for(lambda: not runner.busy())
    st = runner.state()
    assert st.state == "dead" and st.returncode is None and "without an exit status" in st.message
    runner.start([PY, "-c", "pass"], tmp_path / "j2")  # the workspace is usable again
    assert runner.wait(timeout=30).state == "finished"


def test_killed_command_is_a_failure_with_its_status(tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    pidfile = tmp_path / "pid"
    code = (
        f"import os, time, pathlib; pathlib.Path({str(pidfile)!r})"
        ".write_text(str(os.getpid())); time.sleep(60)"
    )
    runner.start([PY, "-c", code], tmp_path / "j")
    assert _wait_for(pidfile.exists)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)  # the command only, not the wrapper
    st = runner.wait(timeout=30)
    assert st.state == "failed" and st.returncode == 128 + signal.SIGKILL


def test_stale_lock_from_a_crashed_server_is_ignored(tmp_path):
    runner = JobRunner(tmp_path / "jobs")
    # A lock naming a live process that is not ours (its start time differs): pid reuse.
    me = os.getpid()
    stale = {
        "job_id": "old",
        "label": "fine-tune",
        "command": ["x"],
        "job_dir": str(tmp_path / "old"),
        "pid": me,
        "start_ticks": (start_ticks(me) or 0) + 12345,
        "started": 0.0,
    }
    runner.lock_path.write_text(json.dumps(stale))
    assert runner.state().state == "dead"  # seen as gone, and the lock is released
    assert not runner.busy() and not runner.lock_path.exists()
    runner.start([PY, "-c", "pass"], tmp_path / "new")
    assert runner.wait(timeout=30).state == "finished"
    runner.lock_path.write_text("{not json")  # a lock cut short by a crash
    assert not runner.busy()
