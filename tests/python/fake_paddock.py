"""A fake of `paddock serve` for testing the Python client without the daemon.

It implements just enough of crates/paddock-server/API.md, with the standard
library only (`http.server`): tenants by bearer token, one pool `py` of two
slots, leases, executions (run as local processes: only the tests' own
commands reach it), an NDJSON stream, files kept in memory with their
CRC-32, JSON error bodies, and faults a test can switch on (`FakeState.faults`)
to check that the client and the e2e script notice them.

It listens on loopback TCP (`start_tcp`) or on a Unix socket (`start_unix`),
where every caller is the operator, as on the daemon's socket.
"""

import base64
import json
import os
import socketserver
import subprocess
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

POOL = "py"
SLOTS = 2

# token -> (tenant, admin)
TOKENS = {
    "token-acme": ("acme", False),
    "token-beta": ("beta", False),
    "token-admin": ("ops", True),
}

OPERATOR = ("local", True)


class FakeState:
    """What the fake daemon knows, and what it saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.leases = {}  # id -> lease object
        self.ended = {}  # id -> (tenant, reason)
        self.files = {}  # (lease id, path) -> (bytes, mode)
        self.counter = 0
        self.requests = []  # (method, path, headers dict, body bytes)
        # Faults: "leak_leases" (every tenant sees every lease),
        # "wrong_crc", "no_crc", "truncate_stream".
        self.faults = set()
        # Set by a test: the refusal (status, code, message, retry_after_ms)
        # every acquire gets.
        self.acquire_refusal = None
        # Set by a test: after a stream's first chunk, the fake waits (up to
        # 5 s) for this event, and records in `gate_opened` whether it came
        # before the stream ended, i.e. whether the client saw the chunk
        # while the response was still open.
        self.stream_gate = None
        self.gate_opened = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    # -- Plumbing ---------------------------------------------------------

    @property
    def state(self):
        return self.server.state

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def send(self, status, body=b"", content_type="application/json", headers=()):
        self.send_response(status)
        if status != 204:  # a 204 has neither
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status, value):
        self.send(status, json.dumps(value).encode())

    def error(self, status, code, message, retry_after_ms=None):
        error = {"code": code, "message": message}
        if retry_after_ms is not None:
            error["retry_after_ms"] = retry_after_ms
        self.send_json(status, {"error": error})

    def caller(self):
        """(tenant, admin) of the caller, or None (after answering 401)."""
        if self.server.is_unix:
            return OPERATOR
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if token not in TOKENS:
            self.error(401, "unauthorized", "no token, or a token no tenant has")
            return None
        return TOKENS[token]

    def visible(self, lease, who):
        tenant, _ = who
        return who == OPERATOR or lease["tenant"] == tenant or "leak_leases" in self.state.faults

    def find_lease(self, lease_id, who):
        """The caller's live lease `lease_id`, or None after answering 409/404."""
        with self.state.lock:
            lease = self.state.leases.get(lease_id)
            ended = self.state.ended.get(lease_id)
        if lease is not None and self.visible(lease, who):
            return lease
        if ended is not None and (who == OPERATOR or ended[0] == who[0]):
            self.error(409, "lease_ended", ended[1])
            return None
        self.error(404, "lease_not_found", f"no lease {lease_id}")
        return None

    # -- Dispatch ---------------------------------------------------------

    def handle_any(self, method):
        url = urlsplit(self.path)
        body = self.read_body()
        self.state.requests.append((method, self.path, dict(self.headers), body))
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}

        if method == "GET" and parts == ["healthz"]:
            return self.send_json(200, {"status": "ok", "pools": 1})
        if method == "GET" and parts == ["metrics"]:
            text = b"# TYPE paddock_up gauge\npaddock_up 1\n"
            return self.send(200, text, "text/plain; version=0.0.4")
        who = self.caller()
        if who is None:
            return None
        if parts[:1] != ["v1"]:
            return self.error(404, "not_found", f"no route {url.path}")
        route = parts[1:]

        if method == "GET" and route == ["pools"]:
            return self.send_json(200, {"pools": [self.pool_object()]})
        if method == "GET" and route == ["leases"]:
            with self.state.lock:
                leases = [l for l in self.state.leases.values() if self.visible(l, who)]
            return self.send_json(200, {"leases": leases})
        if len(route) >= 2 and route[0] == "pools":
            if route[1] == "plain":
                return self.send(500, b"oops: not JSON", "text/plain")
            if route[1] != POOL:
                return self.error(404, "pool_not_found", f"no pool {route[1]}")
            return self.pool_route(method, route[2:], body, who)
        if len(route) >= 2 and route[0] == "leases":
            return self.lease_route(method, route[1], route[2:], body, query, who)
        return self.error(404, "not_found", f"no route {url.path}")

    do_GET = lambda self: self.handle_any("GET")  # noqa: E731
    do_POST = lambda self: self.handle_any("POST")  # noqa: E731
    do_PUT = lambda self: self.handle_any("PUT")  # noqa: E731
    do_DELETE = lambda self: self.handle_any("DELETE")  # noqa: E731

    # -- Pools ------------------------------------------------------------

    def pool_object(self):
        with self.state.lock:
            leased = len(self.state.leases)
        return {"name": POOL, "ready": SLOTS - leased, "leased": leased, "preparing": 0,
                "total": SLOTS, "min_ready": SLOTS, "max_size": 4, "reset": "in_place",
                "backend_available": True, "draining": False}

    def pool_route(self, method, rest, body, who):
        if method == "GET" and rest == ["slots"]:
            with self.state.lock:
                by_slot = {l["slot"]: l for l in self.state.leases.values()}
            slots = []
            for index in range(SLOTS):
                lease = by_slot.get(index)
                mine = lease is not None and self.visible(lease, who)
                slots.append({"index": index, "state": "leased" if lease else "ready",
                              "lease": lease["id"] if mine else None,
                              "tenant": lease["tenant"] if mine else None,
                              "domain": f"paddock-{POOL}-{index}"})
            return self.send_json(200, {"slots": slots})
        if method == "POST" and rest == ["leases"]:
            return self.acquire(body, who)
        operator_route = (rest == ["drain"]) or (len(rest) == 3 and rest[0] == "slots" and rest[2] in ("reset", "recycle"))
        if method == "POST" and operator_route:
            if not who[1]:
                return self.error(403, "forbidden", "an operator endpoint")
            return self.send_json(202, {})
        return self.error(404, "not_found", "no such pool route")

    def acquire(self, body, who):
        try:
            request = json.loads(body) if body else {}
            wait_ms = request.get("wait_ms")
            if wait_ms is not None and not isinstance(wait_ms, int):
                raise ValueError("wait_ms is not an integer")
        except (ValueError, AttributeError) as err:
            return self.error(400, "bad_request", str(err))
        if self.state.acquire_refusal is not None:
            return self.error(*self.state.acquire_refusal)
        with self.state.lock:
            taken = {l["slot"] for l in self.state.leases.values()}
            free = [i for i in range(SLOTS) if i not in taken]
            if not free:
                lease = None
            else:
                self.state.counter += 1
                lease = {"id": f"l-{self.state.counter}", "pool": POOL, "slot": free[0],
                         "tenant": who[0], "domain": f"paddock-{POOL}-{free[0]}",
                         "acquired_at": "2026-12-01T05:00:00.000000Z"}
                self.state.leases[lease["id"]] = lease
        if lease is None:
            return self.error(503, "unavailable", f"no slot within {wait_ms} ms")
        return self.send_json(201, lease)

    # -- Leases -----------------------------------------------------------

    def lease_route(self, method, lease_id, rest, body, query, who):
        lease = self.find_lease(lease_id, who)
        if lease is None:
            return None
        if method == "DELETE" and rest == []:
            with self.state.lock:
                self.state.leases.pop(lease_id, None)
                self.state.ended[lease_id] = (lease["tenant"], "released")
            return self.send(204)
        if method == "POST" and rest == ["exec"]:
            return self.execute(body)
        if rest == ["files"]:
            path = query.get("path", "")
            if not path.startswith("/"):
                return self.error(400, "bad_request", f"guest path {path!r} is not absolute")
            if method == "PUT":
                mode = int(query.get("mode", "644"), 8)
                with self.state.lock:
                    self.state.files[(lease_id, path)] = (body, mode)
                return self.send_json(200, {"path": path, "size": len(body), "crc32": zlib.crc32(body)})
            if method == "GET":
                with self.state.lock:
                    found = self.state.files.get((lease_id, path))
                if found is None:
                    return self.error(404, "not_found", f"no file {path}")
                data, mode = found
                crc = zlib.crc32(data)
                headers = [("X-Paddock-Mode", format(mode, "o"))]
                if "wrong_crc" in self.state.faults:
                    crc ^= 1
                if "no_crc" not in self.state.faults:
                    headers.append(("X-Paddock-Crc32", str(crc)))
                return self.send(200, data, "application/octet-stream", headers)
        return self.error(404, "not_found", "no such lease route")

    # -- Executions -------------------------------------------------------

    def execute(self, body):
        try:
            request = json.loads(body)
            argv, shell = request.get("argv"), request.get("shell")
            if (argv is None) == (shell is None):
                raise ValueError("exactly one of argv and shell")
            command = list(argv) if argv is not None else ["/bin/sh", "-c", shell]
            env = dict(os.environ, **(request.get("env") or {}))
            output = request.get("output", "text")
            if output not in ("text", "base64"):
                raise ValueError(f"output {output!r}")
        except (ValueError, TypeError, AttributeError) as err:
            return self.error(400, "bad_request", str(err))
        timeout_s = request.get("timeout_ms", 30_000) / 1000
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, cwd=request.get("cwd"))
        stdin = (request.get("stdin") or "").encode()
        if not request.get("stream"):
            timed_out = False
            try:
                out, err = process.communicate(stdin, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
                timed_out = True
            result = self.result(process, timed_out)
            if output == "text":
                result.update(stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"))
            else:
                result.update(stdout=base64.b64encode(out).decode(), stderr=base64.b64encode(err).decode())
            return self.send_json(200, result)
        return self.stream(process, stdin, output)

    @staticmethod
    def result(process, timed_out):
        code = process.returncode
        return {"exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                "timed_out": timed_out, "duration_ms": 1,
                "stdout_truncated": False, "stderr_truncated": False}

    def stream(self, process, stdin, output):
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def line(value):
            data = json.dumps(value).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def chunk(key, data):
            if output == "text":
                return {key: data.decode(errors="replace")}
            return {f"{key}_b64": base64.b64encode(data).decode()}

        process.stdin.write(stdin)
        process.stdin.close()
        stderr = []
        reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()))
        reader.start()
        first = True
        while True:
            data = os.read(process.stdout.fileno(), 65536)
            if not data:
                break
            line(chunk("stdout", data))
            if first and self.state.stream_gate is not None:
                self.state.gate_opened = self.state.stream_gate.wait(5)
            first = False
        reader.join()
        process.wait()
        process.stdout.close()
        process.stderr.close()
        if stderr and stderr[0]:
            line(chunk("stderr", stderr[0]))
        if "truncate_stream" not in self.state.faults:
            line({"result": self.result(process, False)})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _TcpServer(ThreadingHTTPServer):
    daemon_threads = True
    is_unix = False


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    is_unix = True


def _serve(server):
    server.state = FakeState()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def start_tcp():
    """A fake on 127.0.0.1 (a free port): `server.server_address`, `server.state`."""
    return _serve(_TcpServer(("127.0.0.1", 0), Handler))


def start_unix(path):
    """A fake on the Unix socket `path`, where every caller is the operator."""
    return _serve(_UnixServer(path, Handler))


def stop(server):
    """Stops serving and closes the listener."""
    server.shutdown()
    server.server_close()
