"""A small client for Paddock's HTTP API (crates/paddock-server/API.md).

It is written from API.md alone, on httpx, as a tenant's or an operator's
program would be:

    from paddock_client import PaddockClient, PaddockError

    # A tenant, over TCP with its bearer token.
    with PaddockClient(url="http://127.0.0.1:8080", token="...") as paddock:
        lease = paddock.acquire("py", wait_ms=30000)
        result = paddock.exec(lease, argv=["python3", "-c", "print(1)"])
        paddock.release(lease)

    # The operator, over the daemon's Unix socket (no token).
    with PaddockClient(socket="/run/paddock/paddock.sock") as paddock:
        print(paddock.pools())

Every error answer becomes a `PaddockError` carrying the JSON error body's
`code`, `message` and `retry_after_ms`. An answer that breaks API.md itself
(a wrong CRC-32, a missing header, a body that is not the JSON it should
be) raises `PaddockProtocolError`.
"""

import json
import zlib
from urllib.parse import quote

import httpx

__all__ = ["PaddockClient", "PaddockError", "PaddockProtocolError"]

# How much of a file object is read and sent at a time by `put_file`.
_CHUNK = 64 * 1024

# What a collected or streamed execution may take beyond its own timeout
# before the client gives up reading (the daemon ends it at `timeout_ms`).
_EXEC_READ_MARGIN_S = 30.0


class PaddockError(Exception):
    """An error answer of the daemon (API.md, "Errors").

    `status` is the HTTP status; `code` the stable error code (e.g.
    `lease_not_found`), or None when the body was not an API error object;
    `message` the human text; `retry_after_ms` set on refusals that pass with
    time (e.g. `rate_limited`), else None; `rule` the policy rule that
    denied the request (`policy_denied`), else None.
    """

    def __init__(self, status, code, message, retry_after_ms=None, rule=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.rule = rule


class PaddockProtocolError(Exception):
    """The daemon answered, but not as API.md says it does."""


def _lease_id(lease):
    """A lease id from an id or a lease object (the dict `acquire` returns)."""
    if isinstance(lease, dict):
        return lease["id"]
    return str(lease)


def _segment(value):
    """One URL path segment: pool names and lease ids are quoted whole."""
    return quote(str(value), safe="")


def _error_from(response):
    """The `PaddockError` of an error response (its body already read)."""
    try:
        error = response.json()["error"]
        return PaddockError(
            response.status_code,
            error["code"],
            error.get("message", ""),
            error.get("retry_after_ms"),
            error.get("rule"),
        )
    except (ValueError, KeyError, TypeError):
        text = response.text
        if len(text) > 500:
            text = text[:500] + "..."
        return PaddockError(response.status_code, None, text)


class PaddockClient:
    """A connection to one Paddock daemon, over TCP or its Unix socket.

    `url` and `token` reach the TCP listener as a tenant (the token is sent
    as `Authorization: Bearer`); `socket` reaches the Unix socket listener
    instead (the local operator; `url` then only names the host in the
    requests). `timeout` (seconds) bounds connecting and each read, except
    that executions may read for their own `timeout_ms` plus a margin.
    """

    def __init__(self, url="http://paddock", token=None, socket=None, timeout=30.0):
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        transport = httpx.HTTPTransport(uds=socket) if socket is not None else None
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(timeout),
        )

    def close(self):
        """Closes the connections."""
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- The raw request -------------------------------------------------

    def request(self, method, path, expect=(200,), **kwargs):
        """Sends one request (httpx keyword arguments: `json`, `params`,
        `content`, `headers`, `timeout`) and returns the `httpx.Response`,
        whose status must be one of `expect`; an error answer raises
        `PaddockError`. For requests this client has no method for (e.g. a
        malformed body, to see the daemon refuse it)."""
        response = self._http.request(method, path, **kwargs)
        if response.status_code not in expect:
            raise _error_from(response)
        return response

    def _json(self, method, path, expect=(200,), **kwargs):
        response = self.request(method, path, expect=expect, **kwargs)
        try:
            return response.json()
        except ValueError as err:
            raise PaddockProtocolError(
                f"{method} {path}: {response.status_code} with a body that is not JSON: "
                f"{response.text[:200]!r}"
            ) from err

    # -- Health and metrics ---------------------------------------------

    def healthz(self):
        """`GET /healthz`: `{"status": "ok", "pools": N}`, or
        `{"status": "draining"}` (a 503) once the daemon drains."""
        return self._json("GET", "/healthz", expect=(200, 503))

    def metrics(self):
        """`GET /metrics`: the Prometheus text exposition, as a string."""
        return self.request("GET", "/metrics").text

    # -- Pools, slots, leases -------------------------------------------

    def pools(self):
        """`GET /v1/pools`: the list of pool objects."""
        return self._json("GET", "/v1/pools")["pools"]

    def slots(self, pool):
        """`GET /v1/pools/{pool}/slots`: the list of the pool's slots."""
        return self._json("GET", f"/v1/pools/{_segment(pool)}/slots")["slots"]

    def leases(self):
        """`GET /v1/leases`: the caller's leases (every lease for the operator)."""
        return self._json("GET", "/v1/leases")["leases"]

    def acquire(self, pool, wait_ms=None):
        """`POST /v1/pools/{pool}/leases`: a lease of a ready slot, waiting
        up to `wait_ms` for one (the pool's `acquire_timeout` if None).
        Returns the lease object (`id`, `pool`, `slot`, `tenant`, ...)."""
        body = {} if wait_ms is None else {"wait_ms": wait_ms}
        read = self.timeout if wait_ms is None else max(self.timeout, wait_ms / 1000 + 10)
        return self._json(
            "POST",
            f"/v1/pools/{_segment(pool)}/leases",
            expect=(201,),
            json=body,
            timeout=httpx.Timeout(self.timeout, read=read),
        )

    def release(self, lease):
        """`DELETE /v1/leases/{id}`: ends the lease (an id or lease object)."""
        self.request("DELETE", f"/v1/leases/{_segment(_lease_id(lease))}", expect=(204,))

    # -- Executions -----------------------------------------------------

    @staticmethod
    def _exec_body(argv, shell, env, cwd, timeout_ms, stdin, output, stream):
        if (argv is None) == (shell is None):
            raise ValueError("give exactly one of argv (a list) and shell (a string)")
        body = {"stream": stream, "output": output}
        if argv is not None:
            body["argv"] = list(argv)
        else:
            body["shell"] = shell
        for key, value in (("env", env), ("cwd", cwd), ("timeout_ms", timeout_ms), ("stdin", stdin)):
            if value is not None:
                body[key] = value
        return body

    def _exec_timeout(self, timeout_ms):
        # The daemon's default execution timeout is 30 s (API.md).
        limit_s = (30_000 if timeout_ms is None else timeout_ms) / 1000
        return httpx.Timeout(self.timeout, read=max(self.timeout, limit_s + _EXEC_READ_MARGIN_S))

    def exec(self, lease, argv=None, shell=None, env=None, cwd=None, timeout_ms=None,
             stdin=None, output="text"):
        """`POST /v1/leases/{id}/exec`, collected: runs `argv` (a list, no
        shell) or `shell` (a string, `/bin/sh -c`) and returns the result
        (`exit_code`, `signal`, `timed_out`, `duration_ms`, `stdout`,
        `stderr`, `*_truncated`). A non-zero exit is a result, not an error."""
        body = self._exec_body(argv, shell, env, cwd, timeout_ms, stdin, output, stream=False)
        return self._json(
            "POST",
            f"/v1/leases/{_segment(_lease_id(lease))}/exec",
            json=body,
            timeout=self._exec_timeout(timeout_ms),
        )

    def exec_stream(self, lease, argv=None, shell=None, env=None, cwd=None, timeout_ms=None,
                    stdin=None, output="text"):
        """`POST /v1/leases/{id}/exec` streamed: a generator of the NDJSON
        objects as they arrive: `{"stdout": ...}`, `{"stderr": ...}` (or
        `stdout_b64`/`stderr_b64`), then one last `{"result": {...}}` or
        `{"error": {...}}`, which is yielded too, not raised.

        The request is sent when the generator is first advanced; an error
        answer then raises `PaddockError`. A stream that ends without its
        last line raises `PaddockProtocolError`."""
        body = self._exec_body(argv, shell, env, cwd, timeout_ms, stdin, output, stream=True)
        path = f"/v1/leases/{_segment(_lease_id(lease))}/exec"
        with self._http.stream("POST", path, json=body, timeout=self._exec_timeout(timeout_ms)) as response:
            if response.status_code != 200:
                response.read()
                raise _error_from(response)
            ended = False
            for line in response.iter_lines():
                if not line.strip():
                    continue
                if ended:
                    raise PaddockProtocolError(f"a line after the stream's last one: {line[:200]!r}")
                try:
                    event = json.loads(line)
                except ValueError as err:
                    raise PaddockProtocolError(f"a stream line that is not JSON: {line[:200]!r}") from err
                ended = "result" in event or "error" in event
                yield event
            if not ended:
                raise PaddockProtocolError("the stream ended without a result or error line")

    # -- Files ----------------------------------------------------------

    def put_file(self, lease, path, data_or_fileobj, mode=0o644):
        """`PUT /v1/leases/{id}/files`: writes the guest file `path`
        (absolute) with permission bits `mode`. `data_or_fileobj` is bytes
        (sent with a Content-Length), a binary file object or an iterable of
        bytes (streamed in chunks, `Transfer-Encoding: chunked`). Returns
        `{"path", "size", "crc32"}`."""
        if isinstance(data_or_fileobj, (bytes, bytearray, memoryview)):
            content = bytes(data_or_fileobj)
        elif hasattr(data_or_fileobj, "read"):
            content = _chunks(data_or_fileobj)
        else:
            content = data_or_fileobj
        return self._json(
            "PUT",
            f"/v1/leases/{_segment(_lease_id(lease))}/files",
            params={"path": path, "mode": format(mode, "o")},
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        )

    def get_file(self, lease, path):
        """`GET /v1/leases/{id}/files`: the guest file `path`'s bytes, whose
        CRC-32 must match the response's `X-Paddock-Crc32`."""
        response = self.request(
            "GET",
            f"/v1/leases/{_segment(_lease_id(lease))}/files",
            params={"path": path},
        )
        data = response.content
        header = response.headers.get("X-Paddock-Crc32")
        if header is None:
            raise PaddockProtocolError(f"GET file {path}: no X-Paddock-Crc32 header")
        try:
            expected = int(header)
        except ValueError as err:
            raise PaddockProtocolError(f"GET file {path}: X-Paddock-Crc32 {header!r} is not a number") from err
        actual = zlib.crc32(data) & 0xFFFFFFFF
        if actual != expected:
            raise PaddockProtocolError(
                f"GET file {path}: CRC-32 of the {len(data)} bytes received is {actual}, "
                f"X-Paddock-Crc32 says {expected}"
            )
        return data

    # -- Operator endpoints ---------------------------------------------

    def reset_slot(self, pool, index):
        """`POST /v1/pools/{pool}/slots/{index}/reset` (operator)."""
        self.request("POST", f"/v1/pools/{_segment(pool)}/slots/{int(index)}/reset", expect=(202,))

    def recycle_slot(self, pool, index):
        """`POST /v1/pools/{pool}/slots/{index}/recycle` (operator)."""
        self.request("POST", f"/v1/pools/{_segment(pool)}/slots/{int(index)}/recycle", expect=(202,))

    def drain(self, pool):
        """`POST /v1/pools/{pool}/drain` (operator)."""
        self.request("POST", f"/v1/pools/{_segment(pool)}/drain", expect=(202,))


def _chunks(fileobj):
    """The contents of a binary file object, `_CHUNK` bytes at a time."""
    while True:
        chunk = fileobj.read(_CHUNK)
        if not chunk:
            return
        yield chunk
