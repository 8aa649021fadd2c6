"""A terminal in a lease's guest over the daemon's WebSocket, from
websocket-client (PyPI), not from Paddock's own code: a shell typed at, its
window resized, Ctrl-C to a foreground sleep, its exit; and a policy
without `exec.tty` refusing the upgrade with 403; a client that goes away
ending the terminal's processes.

Usage: terminal.py --url http://127.0.0.1:PORT --token T --lease L
                   --denied-lease D
Exits 0 when every check passes; prints what failed otherwise.
"""

import argparse
import json
import sys
import time

import httpx
import websocket


def read_until(ws, want, seen=b""):
    """Reads binary messages until `want` shows in what came since `seen`."""
    out = bytearray()
    while want not in out:
        opcode, data = ws.recv_data()
        if opcode != websocket.ABNF.OPCODE_BINARY:
            raise AssertionError(f"waiting for {want!r}, got opcode {opcode}: {data!r}")
        out += data
    return bytes(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--lease", required=True)
    parser.add_argument("--denied-lease", required=True)
    args = parser.parse_args()
    base = args.url.replace("http://", "ws://", 1)
    auth = [f"Authorization: Bearer {args.token}"]

    # Without an upgrade the route answers an ordinary JSON error.
    plain = httpx.get(
        f"{args.url}/v1/leases/{args.lease}/terminal",
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=30,
    )
    assert plain.status_code == 400, (plain.status_code, plain.text)
    assert plain.json()["error"]["code"] == "bad_request", plain.text

    ws = websocket.create_connection(
        f"{base}/v1/leases/{args.lease}/terminal?term=vt100&rows=24&cols=80&timeout_ms=120000",
        header=auth,
        timeout=30,
    )
    ws.send_binary(b"PS1='py$ '\n")
    read_until(ws, b"py$ ")
    ws.send_binary(b"echo hi-$((40+2))\n")
    out = read_until(ws, b"hi-42\r\n")
    assert b"echo hi-$((40+2))\r\n" in out, out
    ws.send_binary(b"echo TERM=$TERM; stty size\n")
    read_until(ws, b"TERM=vt100\r\n24 80\r\n")
    ws.send(json.dumps({"resize": {"rows": 40, "cols": 100}}))
    ws.send_binary(b"stty size\n")
    read_until(ws, b"40 100\r\n")
    # The shell runs the line (its echo shows it did), so the sleep is in
    # the foreground; the next line is read only once the sleep is over,
    # so its answer within the timeout shows Ctrl-C ended the sleep.
    ws.send_binary(b"echo start-$((1+1)); sleep 1000\n")
    read_until(ws, b"start-2\r\n")
    ws.send_binary(b"\x03")
    ws.send_binary(b"echo alive-$((6*7))\n")
    read_until(ws, b"alive-42\r\n")
    ws.send_binary(b"exit 7\n")
    while True:
        opcode, data = ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_TEXT:
            control = json.loads(data)
            break
        assert opcode == websocket.ABNF.OPCODE_BINARY, (opcode, data)
    assert control["exit"]["exit_code"] == 7, control
    assert control["exit"]["timed_out"] is False, control
    opcode, _ = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE, opcode
    ws.close()

    # A client that goes away ends the terminal's processes in the guest.
    def sleep_runs():
        answer = httpx.post(
            f"{args.url}/v1/leases/{args.lease}/exec",
            headers={"Authorization": f"Bearer {args.token}"},
            json={"shell": "ps | grep -q '[s]leep 1000.5'"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["exit_code"] == 0

    def within(condition, what):
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    ws = websocket.create_connection(
        f"{base}/v1/leases/{args.lease}/terminal?cmd=sleep%201000.5",
        header=auth,
        timeout=30,
    )
    within(sleep_runs, "the terminal's sleep never ran")
    ws.close()
    within(lambda: not sleep_runs(), "the sleep outlived its client")

    try:
        websocket.create_connection(
            f"{base}/v1/leases/{args.denied_lease}/terminal",
            header=auth,
            timeout=30,
        )
    except websocket.WebSocketBadStatusException as refused:
        assert refused.status_code == 403, refused.status_code
        body = json.loads(refused.resp_body)
        assert body["error"]["code"] == "policy_denied", body
        assert body["error"]["rule"] == "exec.tty", body
    else:
        raise AssertionError("a terminal under a policy without exec.tty was upgraded")
    print("terminal: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failed:
        print(f"terminal: FAILED {failed!r}", file=sys.stderr)
        sys.exit(1)
