"""A small fault-injecting HTTP proxy for tests: loopback only, one request per connection, bounded.

Put it in front of moto's ThreadedMotoServer and point `AWS_ENDPOINT_URL` at `proxy.url`; then
    proxy.fail(3)                      # the next 3 requests get 503 SlowDown, then all is normal
    proxy.fail(-1, prefix="/b/cat/")   # every request under that key prefix gets 503 until `heal()`
    proxy.stall(prefix="/b/cat/")      # requests there get no answer (until `heal()` or `max_stall`)
    proxy.down() / proxy.up()          # close / reopen the listening port: connection refused
    proxy.down_on("/b/out/", ".parquet")  # the first such request kills the endpoint (dropped, then refused)
Every forwarded request carries `Connection: close`, so each request arrives on its own connection and
is seen (and counted) by the proxy. Not a general proxy: enough HTTP for the S3 clients in the tests.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

HEAD_LIMIT = 64 * 1024
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Rule:
    """Requests whose path starts with `prefix` (and ends with `suffix`) get `action` ("fail", "stall" or
    "down"), `remaining` times (-1: always)."""

    action: str
    prefix: str
    remaining: int
    status: int = 503
    suffix: str = ""


class FaultProxy:
    """A loopback TCP proxy to `upstream` ("http://host:port") that injects HTTP faults by path prefix."""

    def __init__(self, upstream: str, max_stall: float = 30.0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.max_stall = max_stall
        self.rules: list[Rule] = []
        self.seen: list[tuple[str, str, str]] = []  # (method, path, outcome) of every request
        self._lock = threading.Lock()
        self._healed = threading.Event()
        self._listener: socket.socket | None = None
        self._closed = False
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- faults ---------------------------------------------------------------------------------
    def fail(self, times: int, prefix: str = "/", status: int = 503) -> None:
        """Answer `status` (503: S3 SlowDown) to the next `times` requests under `prefix` (-1: until healed)."""
        with self._lock:
            self._healed.clear()
            self.rules.append(Rule("fail", prefix, times, status))

    def stall(self, prefix: str = "/", times: int = -1) -> None:
        """Read requests under `prefix` but never answer them (until healed or `max_stall` seconds)."""
        with self._lock:
            self._healed.clear()
            self.rules.append(Rule("stall", prefix, times))

    def down_on(self, prefix: str, suffix: str = "") -> None:
        """The first request under `prefix` ending with `suffix` is dropped unanswered and the proxy goes `down()`."""
        with self._lock:
            self.rules.append(Rule("down", prefix, 1, suffix=suffix))

    def heal(self) -> None:
        """Drop every rule and release stalled requests; a `down()` proxy stays down (see `up`)."""
        with self._lock:
            self.rules.clear()
            self._healed.set()

    def reset(self) -> None:
        """Healthy again: no rules, listening, and the record of requests cleared."""
        self.heal()
        self.up()
        with self._lock:
            self.seen.clear()

    def down(self) -> None:
        """Close the listening socket: new connections are refused until `up()`."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept(); close() alone does not
            except OSError:
                pass
            listener.close()

    def up(self) -> None:
        """Listen again (on the same port once one was chosen)."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.heal()
        self.down()

    def count(self, outcome: str, prefix: str = "/") -> int:
        """How many requests under `prefix` met `outcome` ("forwarded", "fail", "stall")."""
        with self._lock:
            return sum(1 for _, path, o in self.seen if o == outcome and path.startswith(prefix))

    # -- plumbing -------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            outcome = "forwarded"
            for rule in self.rules:
                if path.startswith(rule.prefix) and path.endswith(rule.suffix) and rule.remaining != 0:
                    rule.remaining -= rule.remaining > 0
                    outcome = f"fail:{rule.status}" if rule.action == "fail" else rule.action
                    break
            self.seen.append((method, path, outcome.split(":")[0]))
            return outcome

    def _serve(self, client: socket.socket) -> None:
        with client:
            client.settimeout(self.max_stall)
            try:
                head, rest = _read_head(client)
            except OSError:
                return
            if not head:
                return
            method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
            path = unquote(urlsplit(target).path)
            outcome = self._decide(method, path)
            if outcome == "down":
                self.down()
                return
            if outcome == "stall":
                deadline = time.monotonic() + self.max_stall
                while not self._healed.wait(0.05) and time.monotonic() < deadline and not self._closed:
                    pass
                return
            if outcome.startswith("fail"):
                _drain_body(client, head, rest)
                status = int(outcome.split(":")[1])
                body = SLOW_DOWN if status == 503 else b""
                client.sendall(
                    f"HTTP/1.1 {status} Fault\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: close\r\n\r\n".encode()
                    + body
                )
                return
            self._forward(client, _close_connection(head), rest)

    def _forward(self, client: socket.socket, head: bytes, rest: bytes) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=self.max_stall)
        except OSError:
            return
        with upstream:
            upstream.sendall(head + rest)
            pump = threading.Thread(target=_pipe, args=(client, upstream), daemon=True)
            pump.start()
            _pipe(upstream, client)
            pump.join(self.max_stall)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The request line and headers (through the blank line), and whatever body bytes came with them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
        if len(data) > HEAD_LIMIT:
            raise OSError("request head too large")
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def _close_connection(head: bytes) -> bytes:
    """The request head with `Connection: close` (so the next request opens a new connection)."""
    lines = [ln for ln in head.split(b"\r\n") if ln and not ln.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _drain_body(sock: socket.socket, head: bytes, rest: bytes) -> None:
    """Read the request body (by Content-Length, at most what arrives within a short time) before answering."""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    remaining = length - len(rest)
    sock.settimeout(2.0)
    try:
        while remaining > 0:
            chunk = sock.recv(min(remaining, 65536))
            if not chunk:
                break
            remaining -= len(chunk)
    except OSError:
        pass


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes until `src` closes, then half-close `dst`."""
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
