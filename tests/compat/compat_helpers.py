"""Shared helpers for the colony compatibility suite.

Everything here talks to loopback addresses only (127.0.0.1).

* ``ColonyAgent``      -- start / stop / kill -9 / restart a ``colony agent --dev``.
* ``wait_until``       -- poll a predicate until it is truthy, fail clearly on deadline.
* ``SwitchableHTTPServer`` -- a tiny HTTP server whose response code can be switched
  (200 / 429 / 500 ...) and which counts how many responses of each code it served.
* ``TcpListener``      -- a TCP listener that can be closed and re-opened on the same port.
* ``parse_sf_dictionary`` -- an RFC 8941 (Structured Field Values) dictionary parser,
  used to validate the ``X-Colony-Evidence`` header.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import requests

import consul

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

# Deadline for an agent to become ready (GET /v1/status/leader -> 200 + non-empty string).
START_TIMEOUT_S = float(os.environ.get("COLONY_START_TIMEOUT", "30"))
# Deadline for an agent to exit after SIGTERM.
STOP_TIMEOUT_S = float(os.environ.get("COLONY_STOP_TIMEOUT", "15"))

# Never let the environment redirect our loopback traffic or inject a token.
for _var in ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY"):
    os.environ.pop(_var, None)
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = "127.0.0.1,localhost"


def colony_bin() -> Path:
    """Path of the binary under test: $COLONY_BIN or <repo>/target/debug/colony."""
    override = os.environ.get("COLONY_BIN")
    if override:
        p = Path(override)
        return p if p.is_absolute() else (REPO_ROOT / p)
    return REPO_ROOT / "target" / "debug" / "colony"


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """Pick a free ephemeral loopback port by binding to port 0, never one this process
    handed out before (the kernel may give a released port again before its user binds it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------
# polling


class WaitTimeout(AssertionError):
    pass


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float,
    interval_s: float = 0.05,
    message: str | Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` every ``interval_s`` until it returns a truthy value.

    Returns that value. On deadline raises ``WaitTimeout`` (an AssertionError)
    naming what was awaited, the last value returned and the last exception
    raised by the predicate. Exceptions are treated as "not yet", except
    AssertionError, which fails at once: a predicate may assert invariants
    that must hold at every poll.
    """
    deadline = time.monotonic() + timeout_s
    last_value: Any = None
    last_exc: BaseException | None = None
    while True:
        try:
            last_value = predicate()
            last_exc = None
            if last_value:
                return last_value
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    what = message() if callable(message) else message
    what = what or getattr(predicate, "__name__", repr(predicate))
    detail = f"last value: {last_value!r}"
    if last_exc is not None:
        detail += f"; last exception: {type(last_exc).__name__}: {last_exc}"
    raise WaitTimeout(f"timed out after {timeout_s:.1f}s waiting for: {what} ({detail})")


def eventually(assertion: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.05) -> Any:
    """Re-run ``assertion`` (a function that asserts) until it stops raising.

    For reads of state that Consul updates asynchronously (e.g. catalog /
    health views after an agent-local change). Returns the function's result;
    on deadline re-raises the last AssertionError, prefixed with the wait.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return assertion()
        except AssertionError as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"still failing after {timeout_s:.1f}s: {exc}") from exc
        time.sleep(interval_s)


# ---------------------------------------------------------------------------
# the agent process


class AgentNotReady(RuntimeError):
    pass


def _answers(session: requests.Session, url: str) -> bool:
    try:
        return session.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


class ColonyAgent:
    """One ``colony agent --dev`` process (re)started on a given data dir.

    Iterating yields ``(client, base_url, data_dir, proc)`` so a fixture value
    can be unpacked: ``client, base_url, data_dir, proc = agent``.
    """

    def __init__(
        self,
        data_dir: Path,
        node: str,
        log_dir: Path,
        binary: Path | None = None,
        join: str | None = None,
        retry_join: bool = False,
    ) -> None:
        """``join``: start a *client* agent (no ``--dev``, no store) that joins the
        member at that gossip address and forwards the API to a server; with
        ``retry_join`` it keeps trying (``--retry-join``) instead of exiting."""
        self.join = join
        self.retry_join = retry_join
        self.data_dir = Path(data_dir)
        self.node = node
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"colony-{node}.log"
        self.binary = Path(binary) if binary else colony_bin()
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.grpc_port: int = free_port()
        self.dns_port: int = free_port()
        self.client: consul.Consul | None = None
        self.starts = 0

    # -- plumbing --------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self.port is not None, "agent not started"
        return f"http://{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def __iter__(self):
        return iter((self.client, self.base_url, self.data_dir, self.proc))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def _command(self) -> list[str]:
        common = [
            "--node",
            self.node,
            "--http-addr",
            f"{LOOPBACK}:{self.port}",
            "--bind",
            f"{LOOPBACK}:0",
            "--dns-addr",
            f"{LOOPBACK}:{self.dns_port}",
        ]
        if self.join is not None:
            join_flag = "--retry-join" if self.retry_join else "--join"
            return [str(self.binary), "agent", *common, join_flag, self.join]
        return [
            str(self.binary),
            "agent",
            "--dev",
            *common,
            "--grpc-addr",
            f"{LOOPBACK}:{self.grpc_port}",
            "--data-dir",
            str(self.data_dir),
        ]

    # -- lifecycle -------------------------------------------------------
    def start(self, timeout_s: float = START_TIMEOUT_S) -> "ColonyAgent":
        if not self.binary.exists():
            raise AgentNotReady(
                f"colony binary not found at {self.binary} (build it, or set COLONY_BIN)"
            )
        assert not self.running(), "agent already running"
        last_error = ""
        # A freshly picked ephemeral port can be stolen before the agent binds it:
        # retry a couple of times with a new port if the process exits early.
        for _attempt in range(3):
            self.port = free_port()
            self.grpc_port = free_port()
            self.dns_port = free_port()
            self._spawn()
            ready, last_error = self._wait_ready(timeout_s)
            if ready:
                self.client = consul.Consul(host=LOOPBACK, port=self.port)
                return self
            if self.proc.poll() is None:
                self.kill9()
                break  # it is running but never became ready: do not retry
        raise AgentNotReady(
            f"colony agent did not become ready within {timeout_s}s "
            f"(exit code {self.proc.poll() if self.proc else None}; last error: {last_error})\n"
            f"--- log tail ({self.log_path}) ---\n{self.log_tail()}"
        )

    def _spawn(self) -> None:
        """Launch the process on the current ports, appending its output to the log."""
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(self._command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_serving(self, timeout_s: float = START_TIMEOUT_S) -> "ColonyAgent":
        """Start and wait only until the HTTP API answers ``/v1/agent/self``
        (for a client agent that has no server to name a leader)."""
        self.port = free_port()
        self.dns_port = free_port()
        self._spawn()
        session = self.http()
        try:
            wait_until(
                lambda: _answers(session, self.url("/v1/agent/self")),
                timeout_s,
                message=lambda: f"agent {self.node} to serve HTTP\n{self.log_tail()}",
            )
        finally:
            session.close()
        self.client = consul.Consul(host=LOOPBACK, port=self.port)
        return self

    def _wait_ready(self, timeout_s: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout_s
        last_error = "no attempt"
        session = requests.Session()
        session.trust_env = False
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False, f"process exited with {self.proc.returncode}; {last_error}"
                try:
                    r = session.get(self.url("/v1/status/leader"), timeout=1)
                    if r.status_code == 200:
                        leader = r.json()
                        if isinstance(leader, str) and leader:
                            return True, ""
                        last_error = f"leader not elected yet: {r.text!r}"
                    else:
                        last_error = f"HTTP {r.status_code}: {r.text[:200]!r}"
                except (requests.RequestException, ValueError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.05)
            return False, last_error
        finally:
            session.close()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait. Returns the exit code (None if it was not running).

        If it does not exit in time it is SIGKILLed and an AssertionError raised.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"colony agent did not exit within {timeout_s}s of SIGTERM")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> "ColonyAgent":
        self.stop()
        return self.start(timeout_s)

    def close(self) -> None:
        """Teardown: stop without asserting anything."""
        try:
            self.stop()
        except AssertionError:
            pass
        finally:
            self.kill9()

    # -- small conveniences --------------------------------------------
    def gossip_addr(self) -> str:
        """This agent's gossip address, from its own member list."""
        members = self.http().get(self.url("/v1/colony/members"), timeout=5).json()
        return next(m["Addr"] for m in members["Members"] if m["Self"])

    def http(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        return s


# ---------------------------------------------------------------------------
# check targets


class SwitchableHTTPServer:
    """HTTP server on 127.0.0.1:<ephemeral> answering every GET with ``self.code``.

    ``served[code]`` counts responses served with each code (incremented
    before the response is written, so it is a safe lower bound for anything
    the agent could have observed).
    """

    def __init__(self, code: int = 200) -> None:
        self.code = code
        self.served: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):  # noqa: N802
                with owner._lock:
                    code = owner.code
                    owner.served[code] += 1
                body = f"status {code}\n".encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args):  # keep test output clean
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/health"

    def set_code(self, code: int) -> None:
        with self._lock:
            self.code = code

    def count(self, code: int) -> int:
        with self._lock:
            return self.served[code]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class TcpListener:
    """A TCP listener on 127.0.0.1 that accepts and immediately closes connections.

    ``close()`` stops listening (connections are then refused); ``reopen()``
    listens again on the same port.
    """

    def __init__(self) -> None:
        self.port = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.accepted = 0
        self.reopen()

    def reopen(self) -> None:
        assert self._sock is None, "already listening"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, self.port))
        s.listen(64)
        s.settimeout(0.05)
        self.port = s.getsockname()[1]
        self._sock = s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, args=(s, self._stop), daemon=True)
        self._thread.start()

    def _accept_loop(self, sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        if self._sock is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        self._sock = None


# ---------------------------------------------------------------------------
# Consul-shaped lookups


def agent_check(client: consul.Consul, check_id: str) -> dict | None:
    return client.agent.checks().get(check_id)


def check_status(client: consul.Consul, check_id: str) -> str | None:
    chk = agent_check(client, check_id)
    return chk["Status"] if chk else None


def service_check_ids(client: consul.Consul, service_id: str) -> list[str]:
    return sorted(cid for cid, c in client.agent.checks().items() if c.get("ServiceID") == service_id)


def b64(s: str | bytes) -> str:
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def json_body(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def describe(resp: requests.Response) -> str:
    return f"{resp.request.method} {resp.url} -> {resp.status_code} {resp.text[:500]!r}"


def dumps(obj: Any) -> str:
    return json.dumps(obj)


# ---------------------------------------------------------------------------
# RFC 8941 structured field values: dictionary parser


class SFParseError(ValueError):
    pass


class Token(str):
    """An sf-token (as opposed to an sf-string)."""


class SFDate(int):
    """An sf-date (RFC 9651 extension): integer seconds since the epoch."""


class DisplayString(str):
    """An sf-displaystring (RFC 9651 extension)."""


_LCALPHA = "abcdefghijklmnopqrstuvwxyz"
_ALPHA = _LCALPHA + _LCALPHA.upper()
_DIGIT = "0123456789"
_KEY_CHARS = set(_LCALPHA + _DIGIT + "_-.*")
_TCHAR = set(_ALPHA + _DIGIT + "!#$%&'*+-.^_`|~")
_TOKEN_CHARS = _TCHAR | {":", "/"}


class _SFParser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def eof(self) -> bool:
        return self.i >= len(self.s)

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def fail(self, what: str):
        raise SFParseError(f"{what} at offset {self.i} in {self.s!r}")

    def skip_sp(self) -> None:
        while self.peek() == " ":
            self.i += 1

    def skip_ows(self) -> None:
        while self.peek() in (" ", "\t") and self.peek():
            self.i += 1

    def key(self) -> str:
        c = self.peek()
        if not c or not (c in _LCALPHA or c == "*"):
            self.fail("expected key")
        start = self.i
        while self.peek() and self.peek() in _KEY_CHARS:
            self.i += 1
        return self.s[start : self.i]

    def parameters(self) -> dict:
        params: dict = {}
        while self.peek() == ";":
            self.i += 1
            self.skip_sp()
            k = self.key()
            v: Any = True
            if self.peek() == "=":
                self.i += 1
                v = self.bare_item()
            params[k] = v
        return params

    def item_or_inner_list(self) -> tuple[Any, dict]:
        if self.peek() == "(":
            return self.inner_list()
        v = self.bare_item()
        return v, self.parameters()

    def inner_list(self) -> tuple[list, dict]:
        assert self.peek() == "("
        self.i += 1
        items = []
        while not self.eof():
            self.skip_sp()
            if self.peek() == ")":
                self.i += 1
                return items, self.parameters()
            v = self.bare_item()
            items.append((v, self.parameters()))
            if self.peek() not in (" ", ")"):
                self.fail("expected SP or ')' in inner list")
        self.fail("unterminated inner list")

    def bare_item(self) -> Any:
        c = self.peek()
        if c == "-" or (c and c in _DIGIT):
            return self.number()
        if c == '"':
            return self.string()
        if c and (c in _ALPHA or c == "*"):
            return self.token()
        if c == ":":
            return self.binary()
        if c == "?":
            return self.boolean()
        if c == "@":
            self.i += 1
            n = self.number()
            if not isinstance(n, int):
                self.fail("sf-date must be an integer")
            return SFDate(n)
        if c == "%":
            return self.display_string()
        self.fail("expected bare item")

    def number(self):
        sign = 1
        if self.peek() == "-":
            sign = -1
            self.i += 1
        start = self.i
        is_decimal = False
        while not self.eof():
            c = self.peek()
            if c in _DIGIT:
                self.i += 1
            elif c == "." and not is_decimal:
                if self.i - start > 12:
                    self.fail("decimal integer part too long")
                is_decimal = True
                self.i += 1
            else:
                break
            if not is_decimal and self.i - start > 15:
                self.fail("integer too long")
            if is_decimal and self.i - start > 16:
                self.fail("decimal too long")
        text = self.s[start : self.i]
        if not text or not text[0].isdigit():
            self.fail("expected digit")
        if is_decimal:
            if text.endswith("."):
                self.fail("decimal ends with '.'")
            if len(text.split(".")[1]) > 3:
                self.fail("decimal fraction too long")
            return sign * float(text)
        return sign * int(text)

    def string(self) -> str:
        assert self.peek() == '"'
        self.i += 1
        out = []
        while not self.eof():
            c = self.s[self.i]
            self.i += 1
            if c == "\\":
                if self.eof():
                    self.fail("dangling escape")
                n = self.s[self.i]
                self.i += 1
                if n not in ('"', "\\"):
                    self.fail("invalid escape")
                out.append(n)
            elif c == '"':
                return "".join(out)
            elif ord(c) < 0x20 or ord(c) > 0x7E:
                self.fail("invalid string character")
            else:
                out.append(c)
        self.fail("unterminated string")

    def token(self) -> Token:
        start = self.i
        self.i += 1
        while self.peek() and self.peek() in _TOKEN_CHARS:
            self.i += 1
        return Token(self.s[start : self.i])

    def binary(self) -> bytes:
        self.i += 1
        end = self.s.find(":", self.i)
        if end < 0:
            self.fail("unterminated byte sequence")
        raw = self.s[self.i : end]
        self.i = end + 1
        try:
            return base64.b64decode(raw, validate=True)
        except Exception:
            self.fail("invalid base64 in byte sequence")

    def boolean(self) -> bool:
        self.i += 1
        c = self.peek()
        if c not in ("0", "1"):
            self.fail("invalid boolean")
        self.i += 1
        return c == "1"

    def display_string(self) -> DisplayString:
        self.i += 1
        if self.peek() != '"':
            self.fail("expected '\"' after '%'")
        self.i += 1
        buf = bytearray()
        while not self.eof():
            c = self.s[self.i]
            self.i += 1
            if c == "%":
                buf += bytes.fromhex(self.s[self.i : self.i + 2])
                self.i += 2
            elif c == '"':
                return DisplayString(buf.decode("utf-8"))
            else:
                buf += c.encode()
        self.fail("unterminated display string")


def parse_sf_dictionary(text: str) -> dict[str, tuple[Any, dict]]:
    """Parse an RFC 8941 dictionary into ``{key: (value, params)}``.

    Raises SFParseError for anything that is not a valid sf-dictionary.
    Tokens come back as ``Token`` (a str subclass), strings as ``str``.
    """
    p = _SFParser(text)
    p.skip_sp()
    out: dict[str, tuple[Any, dict]] = {}
    if p.eof():
        return out
    while True:
        k = p.key()
        if p.peek() == "=":
            p.i += 1
            out[k] = p.item_or_inner_list()
        else:
            out[k] = (True, p.parameters())
        p.skip_ows()
        if p.eof():
            return out
        if p.peek() != ",":
            p.fail("expected ','")
        p.i += 1
        p.skip_ows()
        if p.eof():
            p.fail("trailing ','")
