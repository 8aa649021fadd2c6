"""`paddock exec -t` at a real terminal: the command runs under a pty made
here (its controlling terminal), as a person runs it, against a lease's
guest: raw mode while it runs (Ctrl-C goes to the guest, not to
`paddock`), the window size and its changes (SIGWINCH) reach the guest,
the exit status is the guest shell's, and the terminal's modes are
restored afterwards.

Usage: cli_tty.py --paddock BIN --host ADDR --token T --lease L --pool P
Exits 0 when every check passes.
"""

import argparse
import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time


def set_window(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def read_until(fd, want, timeout=20):
    out = bytearray()
    deadline = time.monotonic() + timeout
    while want not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} within {timeout} s; got {bytes(out)!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"the terminal closed; got {bytes(out)!r}")
            out += chunk
    return bytes(out)


def main():
    parser = argparse.ArgumentParser()
    for name in ("--paddock", "--host", "--token", "--lease", "--pool"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()

    master, slave = os.openpty()
    set_window(slave, 30, 90)
    before = termios.tcgetattr(slave)
    env = dict(os.environ, TERM="vt100")

    def controlling():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    child = subprocess.Popen(
        [args.paddock, "--host", args.host, "--token", args.token,
         "exec", "-t", "--lease", args.lease, args.pool],
        stdin=slave, stdout=slave, stderr=slave,
        preexec_fn=controlling, env=env, close_fds=True,
    )
    try:
        # An interactive shell: once it answers, `paddock` is connected
        # (what is typed before waits in this terminal's input; its local
        # echo, before raw mode, shows the line, not the answer).
        os.write(master, b"echo ready-$((2+3))\n")
        read_until(master, b"ready-5\r\n")
        # Raw mode here: no local echo, so each line comes back once, from
        # the guest's terminal.
        raw = termios.tcgetattr(slave)
        assert not raw[3] & termios.ECHO and not raw[3] & termios.ICANON, raw
        os.write(master, b"stty size\n")
        read_until(master, b"30 90\r\n")
        set_window(slave, 45, 120)  # SIGWINCH to paddock, the foreground job
        time.sleep(0.5)
        os.write(master, b"stty size\n")
        read_until(master, b"45 120\r\n")
        os.write(master, b"echo start-$((1+1)); sleep 1000\n")
        read_until(master, b"start-2\r\n")
        os.write(master, b"\x03")  # to the guest's sleep, not to paddock
        os.write(master, b"echo alive-$((6*7))\n")
        read_until(master, b"alive-42\r\n")
        assert child.poll() is None, "paddock ended on Ctrl-C"
        os.write(master, b"exit 3\n")
        status = child.wait(timeout=30)
        assert status == 3, status
        after = termios.tcgetattr(slave)
        assert after == before, (before, after)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
        os.close(slave)
    print("cli_tty: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failed:
        print(f"cli_tty: FAILED {failed!r}", file=sys.stderr)
        sys.exit(1)
