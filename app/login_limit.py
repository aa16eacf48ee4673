"""A growing delay after failed logins, per client address: an ASGI middleware for the app.

Gradio's ``POST /login`` answers 400 to a wrong password as fast as it can (30 tries in 0.18 s).
This middleware sits in front of it (``launch(app_kwargs={"middleware": [...]})``): after the
n-th failure in a row from one address, that address must wait ``base * 2**(n-1)`` seconds
(capped) before its next try is even checked; a try inside the wait gets 429 with
``Retry-After``. A success clears the address. The passwords are never seen here: the middleware
only reads the status gradio answers with.

The address is the TCP peer (``scope["client"]``): behind a reverse proxy every user shares the
proxy's address, so put the limit in the proxy there.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOGIN_PATHS = ("/login", "/login/")


@dataclass
class _Record:
    failures: int = 0
    blocked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """Per-address exponential back-off on failed ``POST /login``.

    Args:
        app: the ASGI app behind (gradio's).
        base: seconds of wait after the first failure.
        cap: the longest wait.
        forget_after: an address with no failure for this long starts again from zero.
        max_addresses: memory bound; the oldest records are dropped beyond it.
        clock: time source (tests pass a fake one).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        base: float = 1.0,
        cap: float = 300.0,
        forget_after: float = 3600.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.base, self.cap, self.forget_after = base, cap, forget_after
        self.max_addresses = max_addresses
        self.clock = clock
        self._records: dict[str, _Record] = {}
        self._checking: set[str] = set()  # one try per address at a time

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if path.removeprefix(root) not in LOGIN_PATHS:
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("unknown", 0))[0]
        wait = self.wait_left(address)
        if wait > 0 or address in self._checking:  # parallel tries must not slip through
            await _too_many(send, max(wait, self.base))
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        self._checking.add(address)
        try:
            await self.app(scope, receive, watch)
        finally:
            self._checking.discard(address)
            if status and status[0] == 200:
                self._records.pop(address, None)
            elif not status or 400 <= status[0] < 500:
                self.failed(address)

    def wait_left(self, address: str) -> float:
        """Seconds ``address`` must still wait before its next login is checked."""
        rec = self._records.get(address)
        if rec is None:
            return 0.0
        now = self.clock()
        if now - rec.last > self.forget_after:
            del self._records[address]
            return 0.0
        return max(0.0, rec.blocked_until - now)

    def failed(self, address: str) -> float:
        """Record a failure; returns the wait it imposes."""
        now = self.clock()
        rec = self._records.pop(address, None) or _Record()
        if now - rec.last > self.forget_after:
            rec = _Record()
        rec.failures += 1
        wait = min(self.cap, self.base * 2 ** (rec.failures - 1))
        rec.blocked_until, rec.last = now + wait, now
        self._records[address] = rec  # re-inserted: dict order = oldest activity first
        while len(self._records) > self.max_addresses:
            del self._records[next(iter(self._records))]
        return wait


async def _too_many(send: Send, wait: float) -> None:
    seconds = math.ceil(wait)
    body = json.dumps(
        {"detail": f"Too many failed logins from this address: wait {seconds} s."}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(seconds).encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
