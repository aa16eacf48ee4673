"""launch.py as an operator exposes it: who may connect, how fast passwords can be guessed, and
whose files gradio's cache holds."""

import asyncio
import json
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from app.login_limit import LoginThrottle
from app_helpers import ROOT, AppServer, tiny_checkpoint

sys.path.insert(0, str(ROOT))
import launch


@pytest.mark.parametrize(
    "host, local",
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("myhost.example", False),
    ],
)
def test_loopback_hosts(host, local):
    assert launch.is_loopback(host) == local


def test_a_network_host_without_auth_is_refused_in_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "launch.py", "--host", "0.0.0.0", "--workspace", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--auth USER:PASS" in r.stderr and "--allow-no-auth" in r.stderr
    assert not (tmp_path / "w").exists()  # refused before anything was made


def test_allow_no_auth_is_explicit_and_loud(capsys):
    args = launch.parse_args(["--host", "0.0.0.0", "--allow-no-auth"])
    assert launch.check_exposure(args) is None
    assert "WITHOUT A PASSWORD" in capsys.readouterr().err
    assert launch.check_exposure(launch.parse_args(["--host", "0.0.0.0", "--auth", "a:b"])) is None


def test_the_gradio_cache_is_private_to_the_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    cache = launch.private_cache(tmp_path)
    assert cache == tmp_path / ".gradio" and stat.S_IMODE(cache.stat().st_mode) == 0o700
    from gradio.utils import get_upload_folder

    assert get_upload_folder() == str(cache.resolve())


# ---------------------------------------------------------------------------------------------
# the login throttle, on its own


class FakeLogin:
    """An ASGI app answering /login 200 for password "right", else 400; counts the checks."""

    def __init__(self):
        self.checked = 0

    async def __call__(self, scope, receive, send):
        body = (await receive()).get("body", b"")
        self.checked += 1
        status = 200 if b"password=right" in body else 400
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _post(app, password, client="10.0.0.1", path="/login"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": f"username=u&password={password}".encode()}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "client": (client, 5555)}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"])


def test_failed_logins_wait_longer_each_time_per_address():
    now = [1000.0]
    inner = FakeLogin()
    app = LoginThrottle(inner, base=1.0, cap=8.0, clock=lambda: now[0])
    assert _post(app, "wrong")[0] == 400
    status, headers = _post(app, "wrong")  # at once: not even checked
    assert status == 429 and headers[b"retry-after"] == b"1" and inner.checked == 1
    assert _post(app, "wrong", client="10.0.0.2")[0] == 400  # another address is not slowed
    waits = []
    for _ in range(5):
        now[0] += app.wait_left("10.0.0.1")
        assert _post(app, "wrong")[0] == 400
        waits.append(app.wait_left("10.0.0.1"))
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped
    now[0] += 8
    assert _post(app, "right")[0] == 200 and app.wait_left("10.0.0.1") == 0  # success clears
    assert _post(app, "wrong")[0] == 400 and app.wait_left("10.0.0.1") == 1.0


def test_the_throttle_passes_everything_else_through():
    inner = FakeLogin()
    app = LoginThrottle(inner)
    for _ in range(5):
        assert _post(app, "wrong", path="/gradio_api/queue/join")[0] == 400
    assert inner.checked == 5 and app.wait_left("10.0.0.1") == 0


def test_the_throttle_forgets_old_addresses_and_bounds_its_memory():
    now = [0.0]
    app = LoginThrottle(FakeLogin(), forget_after=60, max_addresses=3, clock=lambda: now[0])
    for k in range(5):
        _post(app, "wrong", client=f"10.0.0.{k}")
    assert len(app._records) == 3
    now[0] += 61
    assert app.wait_left("10.0.0.4") == 0 and "10.0.0.4" not in app._records


# ---------------------------------------------------------------------------------------------
# the running app


def _login(url, password):
    data = urllib.parse.urlencode({"username": "ann", "password": password}).encode()
    try:
        with urllib.request.urlopen(url + "login", data=data, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_a_running_app_throttles_logins_and_caches_in_its_workspace(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    ws = tmp_path / "ws"
    server = AppServer(ckpt, ws, tmp_path / "server.log", "--auth", "ann:secret")
    try:
        server.wait()
        t = time.perf_counter()
        statuses = [_login(server.url, f"guess{k}") for k in range(30)]
        took = time.perf_counter() - t
        assert statuses[0] == 400 and statuses.count(400) <= 2 and statuses.count(429) >= 28
        assert _login(server.url, "secret") == 429  # even the right one waits its turn
        time.sleep(2.2)
        assert _login(server.url, "secret") == 200
        print(f"\n30 wrong passwords in {took:.2f} s: {statuses.count(400)} checked")
        cache = ws / ".gradio"
        assert cache.is_dir() and stat.S_IMODE(cache.stat().st_mode) == 0o700
        log = (tmp_path / "server.log").read_text()
        assert "Traceback" not in log, log
        assert json.dumps(statuses)  # for the message on failure
    finally:
        server.stop()
