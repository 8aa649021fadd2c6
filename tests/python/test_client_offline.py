"""The Python client (paddock_client.py) and the e2e script (e2e.py) against
a fake daemon (fake_paddock.py), without Paddock: parsing, streaming, the
CRC-32 check, error mapping, the Unix-socket transport.

    cd tests/python && python -m unittest -v test_client_offline.py
"""

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fake_paddock  # noqa: E402
from paddock_client import PaddockClient, PaddockError, PaddockProtocolError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class OverTcp(unittest.TestCase):
    """The client as a tenant over loopback TCP with a bearer token."""

    @classmethod
    def setUpClass(cls):
        cls.server = fake_paddock.start_tcp()
        host, port = cls.server.server_address[:2]
        cls.url = f"http://{host}:{port}"

    @classmethod
    def tearDownClass(cls):
        fake_paddock.stop(cls.server)

    def setUp(self):
        self.server.state = fake_paddock.FakeState()
        self.state = self.server.state
        self.acme = self.client("token-acme")

    def tearDown(self):
        self.acme.close()

    def client(self, token):
        client = PaddockClient(url=self.url, token=token, timeout=10)
        self.addCleanup(client.close)
        return client

    def assertPaddockError(self, call, status, code):
        with self.assertRaises(PaddockError) as caught:
            call()
        self.assertEqual((caught.exception.status, caught.exception.code), (status, code), caught.exception)
        return caught.exception

    # -- Plain JSON endpoints ------------------------------------------

    def test_healthz_and_metrics_need_no_token(self):
        anonymous = PaddockClient(url=self.url, timeout=10)
        self.addCleanup(anonymous.close)
        self.assertEqual(anonymous.healthz(), {"status": "ok", "pools": 1})
        self.assertIn("paddock_up 1\n", anonymous.metrics())
        _, _, headers, _ = self.state.requests[0]
        self.assertNotIn("Authorization", headers)

    def test_the_token_is_sent_as_a_bearer_and_a_wrong_one_is_unauthorized(self):
        self.acme.pools()
        self.assertEqual(self.state.requests[-1][2].get("Authorization"), "Bearer token-acme")
        error = self.assertPaddockError(self.client("nobody").pools, 401, "unauthorized")
        self.assertIn("token", error.message)
        self.assertIsNone(error.retry_after_ms)

    def test_pools_slots_and_leases_are_the_lists_of_their_objects(self):
        pools = self.acme.pools()
        self.assertEqual([p["name"] for p in pools], ["py"])
        self.assertEqual(pools[0]["total"], 2)
        lease = self.acme.acquire("py")
        slots = self.acme.slots("py")
        self.assertEqual([s["state"] for s in slots], ["leased", "ready"])
        self.assertEqual(slots[0]["lease"], lease["id"])
        self.assertEqual([l["id"] for l in self.acme.leases()], [lease["id"]])

    def test_an_unknown_pool_is_pool_not_found(self):
        error = self.assertPaddockError(lambda: self.acme.slots("nope"), 404, "pool_not_found")
        self.assertEqual(error.message, "no pool nope")
        self.assertPaddockError(lambda: self.acme.acquire("no/pe"), 404, "pool_not_found")
        # The name is one quoted path segment, not two.
        self.assertEqual(self.state.requests[-1][1], "/v1/pools/no%2Fpe/leases")

    def test_acquire_sends_wait_ms_and_returns_the_lease_object(self):
        lease = self.acme.acquire("py", wait_ms=1500)
        method, path, _, body = self.state.requests[-1]
        self.assertEqual((method, path), ("POST", "/v1/pools/py/leases"))
        self.assertEqual(json.loads(body), {"wait_ms": 1500})
        self.assertEqual((lease["pool"], lease["tenant"], lease["slot"]), ("py", "acme", 0))
        self.acme.acquire("py")
        self.assertEqual(json.loads(self.state.requests[-1][3]), {})
        self.assertPaddockError(lambda: self.acme.acquire("py", wait_ms=10), 503, "unavailable")

    def test_a_rate_limited_acquire_carries_retry_after_ms(self):
        self.state.acquire_refusal = (429, "rate_limited", "tenant_acquires: retry in 180 ms", 180)
        error = self.assertPaddockError(lambda: self.acme.acquire("py"), 429, "rate_limited")
        self.assertEqual(error.retry_after_ms, 180)
        self.assertEqual(error.message, "tenant_acquires: retry in 180 ms")

    def test_an_error_whose_body_is_not_json_keeps_its_status_and_text(self):
        error = self.assertPaddockError(lambda: self.acme.slots("plain"), 500, None)
        self.assertIn("oops", error.message)

    def test_a_released_lease_is_lease_ended_and_another_tenants_is_not_found(self):
        lease = self.acme.acquire("py")
        self.acme.release(lease["id"])
        self.assertEqual(self.state.requests[-1][:2], ("DELETE", f"/v1/leases/{lease['id']}"))
        error = self.assertPaddockError(lambda: self.acme.exec(lease, argv=["true"]), 409, "lease_ended")
        self.assertEqual(error.message, "released")
        beta = self.client("token-beta")
        self.assertPaddockError(lambda: beta.exec(lease, argv=["true"]), 404, "lease_not_found")
        self.assertPaddockError(lambda: self.acme.release(lease), 409, "lease_ended")

    def test_another_tenant_sees_none_of_a_lease(self):
        lease = self.acme.acquire("py")
        self.acme.put_file(lease, "/f", b"x")
        beta = self.client("token-beta")
        self.assertEqual(beta.leases(), [])
        self.assertIsNone(beta.slots("py")[0]["lease"])
        self.assertPaddockError(lambda: beta.exec(lease, argv=["true"]), 404, "lease_not_found")
        self.assertPaddockError(lambda: beta.get_file(lease, "/f"), 404, "lease_not_found")
        self.assertPaddockError(lambda: beta.release(lease), 404, "lease_not_found")

    def test_operator_endpoints_need_admin(self):
        for call in (lambda c: c.reset_slot("py", 0), lambda c: c.recycle_slot("py", 1), lambda c: c.drain("py")):
            self.assertPaddockError(lambda: call(self.acme), 403, "forbidden")
            call(self.client("token-admin"))
        paths = [r[1] for r in self.state.requests if r[0] == "POST"]
        self.assertIn("/v1/pools/py/slots/0/reset", paths)
        self.assertIn("/v1/pools/py/slots/1/recycle", paths)
        self.assertIn("/v1/pools/py/drain", paths)

    # -- Executions ------------------------------------------------------

    def test_a_collected_exec_sends_its_fields_and_returns_the_result(self):
        lease = self.acme.acquire("py")
        with tempfile.TemporaryDirectory() as cwd:
            result = self.acme.exec(lease, shell='cat; echo "$K"; pwd', env={"K": "V"}, cwd=cwd,
                                    timeout_ms=5000, stdin="in\n")
            self.assertEqual(result["stdout"], f"in\nV\n{os.path.realpath(cwd)}\n")
        self.assertEqual(result["exit_code"], 0)
        self.assertFalse(result["timed_out"])
        sent = json.loads(self.state.requests[-1][3])
        self.assertEqual(sent, {"shell": 'cat; echo "$K"; pwd', "env": {"K": "V"}, "cwd": cwd,
                                "timeout_ms": 5000, "stdin": "in\n", "stream": False, "output": "text"})
        result = self.acme.exec(lease["id"], argv=["sh", "-c", "echo oops >&2; exit 3"])
        self.assertEqual((result["exit_code"], result["stderr"]), (3, "oops\n"))
        self.assertEqual(json.loads(self.state.requests[-1][3])["argv"], ["sh", "-c", "echo oops >&2; exit 3"])

    def test_exec_needs_exactly_one_of_argv_and_shell(self):
        before = len(self.state.requests)
        with self.assertRaises(ValueError):
            self.acme.exec("l-1")
        with self.assertRaises(ValueError):
            self.acme.exec("l-1", argv=["true"], shell="true")
        self.assertEqual(len(self.state.requests), before, "nothing was sent")

    def test_a_bad_request_maps_to_bad_request(self):
        lease = self.acme.acquire("py")
        self.assertPaddockError(
            lambda: self.acme.request("POST", f"/v1/leases/{lease['id']}/exec", json={"argv": ["a"], "shell": "b"}),
            400, "bad_request")

    def test_exec_stream_yields_each_chunk_while_the_response_is_open(self):
        lease = self.acme.acquire("py")
        gate = threading.Event()
        self.state.stream_gate = gate
        events = []
        for event in self.acme.exec_stream(lease, shell="echo first; sleep 0.1; echo second; echo err >&2; exit 4"):
            events.append(event)
            gate.set()  # the fake holds the rest of the stream until here
        self.assertTrue(self.state.gate_opened, "the first chunk reached the caller only after the stream ended")
        self.assertEqual(json.loads(self.state.requests[-1][3])["stream"], True)
        stdout = "".join(e["stdout"] for e in events if "stdout" in e)
        self.assertEqual(stdout, "first\nsecond\n")
        self.assertIn({"stderr": "err\n"}, events)
        self.assertEqual(events[-1]["result"]["exit_code"], 4)
        self.assertEqual(sum("result" in e for e in events), 1)

    def test_exec_stream_in_base64(self):
        lease = self.acme.acquire("py")
        events = list(self.acme.exec_stream(lease, argv=["printf", "\\377\\000"], output="base64"))
        self.assertEqual(events[0], {"stdout_b64": "/wA="})
        self.assertIn("result", events[-1])

    def test_exec_stream_raises_the_error_answer(self):
        lease = self.acme.acquire("py")
        self.acme.release(lease)
        stream = self.acme.exec_stream(lease, argv=["true"])
        self.assertPaddockError(lambda: next(stream), 409, "lease_ended")

    def test_a_stream_that_ends_without_its_last_line_raises(self):
        lease = self.acme.acquire("py")
        self.state.faults.add("truncate_stream")
        with self.assertRaises(PaddockProtocolError):
            list(self.acme.exec_stream(lease, argv=["echo", "hi"]))

    # -- Files -----------------------------------------------------------

    def test_put_file_streams_a_file_object_and_sends_bytes_whole(self):
        lease = self.acme.acquire("py")
        data = os.urandom(200_000)
        answer = self.acme.put_file(lease, "/tmp/a b/f.bin", io.BytesIO(data), mode=0o600)
        self.assertEqual(answer, {"path": "/tmp/a b/f.bin", "size": len(data), "crc32": zlib.crc32(data)})
        method, path, headers, body = self.state.requests[-1]
        self.assertEqual(method, "PUT")
        self.assertEqual(path, f"/v1/leases/{lease['id']}/files?path=%2Ftmp%2Fa+b%2Ff.bin&mode=600")
        self.assertEqual(headers.get("Transfer-Encoding"), "chunked")
        self.assertEqual(body, data)
        self.acme.put_file(lease, "/g", b"hello")
        headers = self.state.requests[-1][2]
        self.assertEqual(headers.get("Content-Length"), "5")
        self.assertTrue(self.state.requests[-1][1].endswith("mode=644"))

    def test_get_file_checks_the_crc32_header(self):
        lease = self.acme.acquire("py")
        data = os.urandom(300_000)
        self.acme.put_file(lease, "/f", data)
        self.assertEqual(self.acme.get_file(lease, "/f"), data)
        self.state.faults.add("wrong_crc")
        with self.assertRaises(PaddockProtocolError) as caught:
            self.acme.get_file(lease, "/f")
        self.assertIn("X-Paddock-Crc32", str(caught.exception))
        self.state.faults = {"no_crc"}
        with self.assertRaises(PaddockProtocolError):
            self.acme.get_file(lease, "/f")
        self.state.faults = set()
        self.assertPaddockError(lambda: self.acme.get_file(lease, "/missing"), 404, "not_found")


class OverUnixSocket(unittest.TestCase):
    """The client as the operator over the daemon's Unix socket (no token)."""

    def setUp(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.socket = os.path.join(directory.name, "paddock.sock")
        self.server = fake_paddock.start_unix(self.socket)
        self.addCleanup(fake_paddock.stop, self.server)
        self.client = PaddockClient(socket=self.socket, timeout=10)
        self.addCleanup(self.client.close)

    def test_requests_go_over_the_socket_without_a_token(self):
        self.assertEqual(self.client.healthz()["status"], "ok")
        lease = self.client.acquire("py", wait_ms=100)
        self.assertEqual(lease["tenant"], "local")
        self.assertEqual(self.client.exec(lease, argv=["echo", "over uds"])["stdout"], "over uds\n")
        self.assertEqual(list(self.client.exec_stream(lease, argv=["echo", "x"]))[0], {"stdout": "x\n"})
        self.client.drain("py")
        self.assertTrue(self.server.state.requests)
        for _, _, headers, _ in self.server.state.requests:
            self.assertNotIn("Authorization", headers)


class E2eScript(unittest.TestCase):
    """e2e.py end to end against the fake: it passes, and fails on a fault."""

    @classmethod
    def setUpClass(cls):
        cls.server = fake_paddock.start_tcp()
        host, port = cls.server.server_address[:2]
        cls.url = f"http://{host}:{port}"

    @classmethod
    def tearDownClass(cls):
        fake_paddock.stop(cls.server)

    def setUp(self):
        self.server.state = fake_paddock.FakeState()

    def run_e2e(self, *args):
        return subprocess.run([sys.executable, os.path.join(HERE, "e2e.py"), *args],
                              capture_output=True, text=True, timeout=120, check=False)

    def tcp_args(self):
        return ["--url", self.url, "--token", "token-acme", "--other-token", "token-beta", "--pool", "py"]

    def test_it_passes_against_the_fake_and_prints_its_timings(self):
        done = self.run_e2e(*self.tcp_args())
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        self.assertTrue(summary["ok"])
        for key in ("acquire_ms", "exec_ms", "release_ms"):
            self.assertIsInstance(summary[key], float, key)
        self.assertGreaterEqual(summary["stream_chunks"], 1)
        self.assertEqual(self.server.state.leases, {}, "the lease was released")

    def test_it_fails_when_another_tenant_sees_the_lease(self):
        self.server.state.faults.add("leak_leases")
        done = self.run_e2e(*self.tcp_args())
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("--other-token", done.stderr)
        self.assertFalse(json.loads(done.stdout.strip().splitlines()[-1])["ok"])
        self.assertEqual(self.server.state.leases, {}, "the lease was released after the failure")

    def test_it_fails_on_a_wrong_crc(self):
        self.server.state.faults.add("wrong_crc")
        done = self.run_e2e(*self.tcp_args())
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("CRC-32", done.stderr)

    def test_it_runs_over_a_unix_socket(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "paddock.sock")
            server = fake_paddock.start_unix(path)
            try:
                done = self.run_e2e("--socket", path, "--pool", "py")
            finally:
                fake_paddock.stop(server)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        self.assertEqual(summary["skipped"], ["other_tenant (no --other-token)"])


if __name__ == "__main__":
    unittest.main()
