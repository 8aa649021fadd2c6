"""End-to-end check of a running `paddock serve` through the Python client.

    python e2e.py --url http://127.0.0.1:PORT --token T --other-token T2 --pool NAME
    python e2e.py --socket /path/paddock.sock --pool NAME [--url ... --other-token T2]

It acquires a lease, runs collected and streamed executions, moves a 1 MiB
file both ways, checks that another tenant cannot see the lease, checks an
exit status, releases the lease and checks that the lease is gone. It prints
one JSON line (the timings in ms) and exits 0, or prints what failed and
exits 1. Uses only `paddock_client` and the standard library.
"""

import argparse
import io
import json
import os
import sys
import time

from paddock_client import PaddockClient, PaddockError

FILE_SIZE = 1 << 20
GUEST_FILE = "/tmp/paddock-e2e/random.bin"
STREAM_SCRIPT = "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done"
STREAM_EXPECTED = "".join(f"line {i}\n" for i in range(1, 6))


class CheckFailed(Exception):
    """One of the checks did not hold."""


def check(condition, what):
    if not condition:
        raise CheckFailed(what)


def expect_error(call, allowed, what):
    """Runs `call`, which must raise a PaddockError whose (status, code) is
    in `allowed`; returns that error."""
    try:
        value = call()
    except PaddockError as err:
        check((err.status, err.code) in allowed, f"{what}: got {err.status} {err.code} ({err.message}), want one of {allowed}")
        return err
    raise CheckFailed(f"{what}: succeeded ({value!r}), want one of {allowed}")


def ms_since(start):
    return round((time.monotonic() - start) * 1000, 1)


def run(args, summary):
    if args.socket:
        client = PaddockClient(socket=args.socket, timeout=args.timeout)
    else:
        client = PaddockClient(url=args.url, token=args.token, timeout=args.timeout)
    other = None
    if args.other_token is not None:
        check(args.url is not None, "--other-token needs --url (the other tenant talks TCP)")
        other = PaddockClient(url=args.url, token=args.other_token, timeout=args.timeout)

    lease = None
    try:
        start = time.monotonic()
        lease = client.acquire(args.pool, wait_ms=args.wait_ms)
        summary["acquire_ms"] = ms_since(start)
        summary["lease"] = lease["id"]
        check(lease.get("pool") == args.pool, f"the lease's pool is {lease.get('pool')!r}, want {args.pool!r}")

        start = time.monotonic()
        result = client.exec(lease, argv=["echo", "hi"])
        summary["exec_ms"] = ms_since(start)
        check(result["exit_code"] == 0, f"`echo hi` exited {result['exit_code']} (stderr {result.get('stderr')!r})")
        check(result["stdout"] == "hi\n", f"`echo hi` printed {result['stdout']!r}")

        start = time.monotonic()
        events = []
        first_chunk_ms = None
        for event in client.exec_stream(lease, shell=STREAM_SCRIPT):
            if first_chunk_ms is None and "stdout" in event:
                first_chunk_ms = ms_since(start)
            events.append(event)
        summary["stream_ms"] = ms_since(start)
        summary["stream_first_chunk_ms"] = first_chunk_ms
        chunks = [e["stdout"] for e in events if "stdout" in e]
        summary["stream_chunks"] = len(chunks)
        check(chunks, f"the streamed loop sent no stdout chunk: {events!r}")
        check("".join(chunks) == STREAM_EXPECTED, f"the streamed stdout is {''.join(chunks)!r}")
        check("result" in events[-1], f"the stream's last line is {events[-1]!r}, not a result")
        check(events[-1]["result"]["exit_code"] == 0, f"the streamed loop ended with {events[-1]['result']!r}")

        data = os.urandom(FILE_SIZE)
        start = time.monotonic()
        put = client.put_file(lease, GUEST_FILE, io.BytesIO(data), mode=0o600)
        summary["put_ms"] = ms_since(start)
        check(put.get("size") == FILE_SIZE, f"put answered size {put.get('size')}, want {FILE_SIZE}")
        start = time.monotonic()
        back = client.get_file(lease, GUEST_FILE)
        summary["get_ms"] = ms_since(start)
        check(len(back) == FILE_SIZE, f"got {len(back)} bytes back, want {FILE_SIZE}")
        check(back == data, "the file got back differs from the file put")

        if other is not None:
            expect_error(lambda: other.exec(lease, argv=["true"]), {(404, "lease_not_found")},
                         "exec with --other-token on the lease")
            expect_error(lambda: other.get_file(lease, GUEST_FILE), {(404, "lease_not_found")},
                         "get_file with --other-token on the lease")
            ids = [entry["id"] for entry in other.leases()]
            check(lease["id"] not in ids, f"the other tenant's leases() lists {lease['id']}: {ids}")
        else:
            summary["skipped"] = ["other_tenant (no --other-token)"]

        result = client.exec(lease, shell="exit 3")
        check(result["exit_code"] == 3, f"`exit 3` gave exit_code {result['exit_code']}")

        start = time.monotonic()
        client.release(lease)
        summary["release_ms"] = ms_since(start)
        released, lease = lease, None
        expect_error(lambda: client.exec(released, argv=["true"]),
                     {(409, "lease_ended"), (404, "lease_not_found")}, "exec on the released lease")

        if args.read_only_pool is not None:
            # A pool held to the shipped read-only policy: `ls` runs, `rm`
            # is refused before it reaches the guest, naming the rule.
            lease = client.acquire(args.read_only_pool, wait_ms=args.wait_ms)
            listed = client.exec(lease, argv=["ls", "/"])
            check(listed["exit_code"] == 0, f"ls / under read-only: {listed}")
            err = expect_error(lambda: client.exec(lease, argv=["rm", "-rf", "/tmp"]),
                               {(403, "policy_denied")}, "rm under the read-only policy")
            check(err.rule == "exec.program", f"the denial's rule is {err.rule!r}")
            check(err.retry_after_ms is None, "a denial is not retried")
            err = expect_error(lambda: client.put_file(lease, "/tmp/x", b"x"),
                               {(403, "policy_denied")}, "an upload under the read-only policy")
            check(err.rule == "put", f"the upload's denial rule is {err.rule!r}")
            client.release(lease)
            lease = None
            summary["policy_denied"] = True
    finally:
        if lease is not None:
            try:
                client.release(lease)
            except Exception as err:  # noqa: BLE001 - cleanup after a failure
                print(f"e2e: could not release {lease['id']} after the failure: {err}", file=sys.stderr)
        client.close()
        if other is not None:
            other.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the TCP listener, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", help="the tenant's bearer token (with --url)")
    parser.add_argument("--other-token", help="another tenant's token, which must not see the lease")
    parser.add_argument("--socket", help="the daemon's Unix socket (instead of --url/--token)")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--read-only-pool", help="a pool held to policies/read-only.toml")
    parser.add_argument("--wait-ms", type=int, default=60_000, help="how long the acquire may wait")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args()
    if args.socket is None and (args.url is None or args.token is None):
        parser.error("give --url and --token, or --socket")

    summary = {"ok": False}
    try:
        run(args, summary)
    except Exception as err:  # noqa: BLE001 - any failure is reported, then exit 1
        summary["failed"] = f"{type(err).__name__}: {err}"
        print(f"e2e FAILED: {summary['failed']}", file=sys.stderr)
        print(json.dumps(summary))
        return 1
    summary["ok"] = True
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
