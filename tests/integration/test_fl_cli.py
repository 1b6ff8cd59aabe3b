"""The federated-learning commands of the sovmesh client against a real
daemon without peers: `feedback`, `fl status`, `fl rollback`, `budget`,
`budget new-period`; their usage errors (exit 2, nothing sent), the
daemon's refusals (exit 1, its message) and --json output; and the same
commands with federated learning off.  A fake daemon on a unix socket
stands in for states a peerless daemon never reaches (synced rounds,
charges, a failed apply) and shows the exact request bodies.

Without peers a round trains and aggregates locally (aggregation_wait_secs
= 0), so it makes a new adapter and charges no ε."""
import http.server
import json
import os
import re
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import (NO_SYSTEM_BUS, PLUGIN_DIR, SOURCE_ROOT, SOVMESH,  # noqa: E402
                             DaemonTestCase)

sys.path.insert(0, os.path.join(SOURCE_ROOT, "tests", "fixtures"))
from ollama_standin import StandIn  # noqa: E402

# Generous: a round trains on the thread pool of a slow, busy machine.
ROUND_DEADLINE = 300.0
BAR = re.compile(r"^\[([#-]{20})\] (\d+\.\d) of (\d+\.\d) ε spent$", re.M)


class FlCliTest(DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.standin = StandIn(["--quiet"]).start()
        self.addCleanup(lambda: self.standin.stop())
        self.state = os.path.join(self.dir, "state")
        self.sock = os.path.join(self.state, "control.sock")
        self.daemon = None

    def boot(self, fl_settings):
        conf = os.path.join(self.dir, "sovmeshd.conf")
        with open(conf, "w") as f:
            f.write("""
node = { name = "flcli"; state_dir = "%s"; plugin_path = ["%s"]; };
mesh = { enabled = false; peer_listen = "127.0.0.1:0"; };
api = { listen = "127.0.0.1:0"; };
pairing = { listen = "127.0.0.1:0"; };
federated_learning = { %s };
plugin_settings = { backend-ollama = { url = "%s"; connect_timeout_ms = 2000; }; };
""" % (self.state, PLUGIN_DIR, fl_settings, self.standin.url))
        self.daemon = self.start(["-c", conf])
        self.daemon.wait_for_socket(self.sock)

    def boot_on(self):
        self.boot("sync_after_n_samples = 3; privacy_budget = 2.0; "
                  "aggregation_wait_secs = 0;")

    def cli(self, *args, stdin="", sock=None):
        """Run sovmesh; stdin is always given, so a command that reads it
        never waits for a terminal."""
        env = dict(os.environ)
        env.pop("SOVMESH_PLUGIN_PATH", None)
        env.update(NO_SYSTEM_BUS)
        return subprocess.run([SOVMESH, "--socket", sock or self.sock] + list(args), env=env,
                              input=stdin, capture_output=True, text=True, timeout=120)

    def ok(self, *args, stdin=""):
        r = self.cli(*args, stdin=stdin)
        self.assertEqual(r.returncode, 0, "%s: %s\n%s" % (args, r.stderr,
                                                          self.daemon.log() if self.daemon
                                                          else ""))
        return r

    def json_of(self, *args):
        return json.loads(self.ok("--json", *args).stdout)

    def status(self):
        return self.json_of("fl", "status")

    def wait_status(self, what, pred):
        deadline = time.monotonic() + ROUND_DEADLINE
        while True:
            st = self.status()
            if pred(st):
                return st
            self.assertLess(time.monotonic(), deadline,
                            "waited for %s: %s\n%s" % (what, st, self.daemon.log()))
            time.sleep(0.2)

    def file(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assert_usage_error(self, args, message, stdin=""):
        r = self.cli(*args, stdin=stdin)
        self.assertEqual(r.returncode, 2, "%s: %s %s" % (args, r.stdout, r.stderr))
        self.assertIn(message, r.stderr, args)
        self.assertIn("Usage: sovmesh", r.stderr, args)
        self.assertEqual(r.stdout, "", args)

    # ---- a whole cycle: feedback, round, status, budget, rollback ----

    def test_feedback_round_status_budget_rollback(self):
        self.boot_on()
        st = self.status()
        self.assertTrue(st["enabled"])
        self.assertEqual(st["samples_total"], 0)

        r = self.ok("feedback", "up", "--prompt", "what is 2+2", "--response", "4")
        self.assertEqual(r.stdout.strip(), "feedback stored (sample 1); 2 of 3 samples "
                         "until the next federated round")
        # From a file and from stdin, with --json: the daemon's own reply.
        prompt = self.file("prompt.txt", "a long question\nover two lines".encode())
        reply = json.loads(self.ok("feedback", "correct", "--prompt-file", prompt,
                                   "--correction-file", "-", "--json",
                                   stdin="the better answer").stdout)
        self.assertEqual(reply, {"id": 2, "pending": 2, "sync_after_n_samples": 3})
        r = self.ok("feedback", "down", "--prompt", "capital of France",
                    "--response", "Berlin", "--model", "llama3.2")
        self.assertEqual(r.stdout.strip(), "feedback stored (sample 3); 3 samples pending: "
                         "a federated round starts now")

        # The third sample starts a round; alone it aggregates into a000001.
        st = self.wait_status("a round and its adapter",
                              lambda s: s["rounds_done"] >= 1
                              and s["adapter"]["current"] not in (None, "initial")
                              and s["applied"]["state"] != "pending")
        self.assertEqual(st["samples_total"], 3)
        self.assertEqual(st["samples_pending"], 0)
        self.assertEqual(st["adapter"]["previous"], "initial")
        new_adapter = st["adapter"]["current"]
        r = self.ok("fl", "status")
        out = r.stdout
        self.assertIn("federated learning: on (trainer trainer-reference, noise dp-laplace, "
                      "aggregator agg-fedavg)", out)
        self.assertIn("samples:       0 pending of 3 stored; a round runs every 3", out)
        self.assertRegex(out, r"rounds:\s+1 done; last: #1 at \d{4}-\d\d-\d\d "
                              r"\d\d:\d\d:\d\d, .*\(ε=0 spent\)")
        self.assertIn("privacy:       ε 0 of 2 spent, 2 remaining (period 1)", out)
        self.assertRegex(out, r"adapter:\s+%s \(previous initial\); applied as "
                              r"llama3\.2-sovmesh" % new_adapter)
        self.assertIn("deltas:        0 sent, 0 received, 0 refused; 0 waiting for "
                      "aggregation", out)
        self.assertNotIn("not ready", out)

        # No peers: nothing left the device, nothing was charged.
        b = self.json_of("budget")
        self.assertEqual((b["period"], b["spent"], b["total"], b["history"]), (1, 0, 2, []))
        out = self.ok("budget").stdout
        self.assertRegex(out, r"spent:\s+ε 0 in 0 charges")
        self.assertRegex(out, r"total:\s+ε 2\n")
        m = BAR.search(out)
        self.assertIsNotNone(m, out)
        self.assertEqual(m.groups(), ("-" * 20, "0.0", "2.0"))
        self.assertIn("no ε spent yet", out)
        self.assertNotIn("earlier periods", out)

        # new-period: a warning and exit 2 without --yes, and nothing changes.
        r = self.cli("budget", "new-period", "--total", "2")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("WARNING", r.stderr)
        self.assertIn("adds up across periods", r.stderr)
        self.assertIn("--yes", r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertEqual(self.json_of("budget")["period"], 1)
        self.assertEqual(len(self.json_of("budget")["periods"]), 1)
        r = self.ok("budget", "new-period", "--yes")
        self.assertIn("started privacy-budget period 2 with ε 2", r.stdout)
        self.assertIsNotNone(BAR.search(r.stdout), r.stdout)
        self.assertIn("earlier periods:\n  period 1, started ", r.stdout)
        b = self.json_of("budget")
        self.assertEqual((b["period"], b["spent"], b["total"]), (2, 0, 2))
        self.assertEqual([p["period"] for p in b["periods"]], [2, 1])
        self.assertIn("(period 2)", self.ok("fl", "status").stdout)
        # A --total above privacy_budget is refused by the daemon, and
        # nothing changes.
        r = self.cli("budget", "new-period", "--yes", "--total", "5")
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("above federated_learning.privacy_budget (2)", r.stderr)
        self.assertEqual(self.json_of("budget")["period"], 2)

        # Roll back to the initial adapter; once more there is nothing to go to.
        r = self.ok("fl", "rollback")
        self.assertEqual(r.stdout.strip(), "rolled back from %s to initial; re-applying it "
                         "to the backend" % new_adapter)
        self.assertEqual(self.status()["adapter"]["current"], "initial")
        r = self.cli("fl", "rollback")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertRegex(r.stderr, r"^error: .*no previous adapter")
        r = self.cli("--json", "fl", "rollback")
        self.assertEqual(r.returncode, 1, r.stdout)
        st = self.wait_status("the initial adapter applied",
                              lambda s: s["applied"]["adapter"] == "initial"
                              and s["applied"]["state"] != "pending")
        self.assertRegex(self.ok("fl", "status").stdout,
                         r"adapter:\s+initial; applied as llama3\.2-sovmesh")

    # ---- bad input: usage errors send nothing; the daemon's refusals ----

    def test_usage_errors_and_refusals(self):
        self.boot_on()
        p = self.file("p.txt", b"question")
        empty = self.file("empty.txt", b"")
        cases = [
            (["feedback"], "say up, down or correct"),
            (["feedback", "up", "--response", "r"], "--prompt TEXT or --prompt-file FILE is "
                                                    "required"),
            (["feedback", "up", "--prompt", "p", "--prompt-file", p, "--response", "r"],
             "give the prompt once"),
            (["feedback", "up", "--prompt", "p", "--prompt", "q", "--response", "r"],
             "give the prompt once"),
            (["feedback", "sideways", "--prompt", "p", "--response", "r"],
             "unknown kind 'sideways' (up, down or correct)"),
            (["feedback", "correct", "--prompt", "p", "--correction", ""],
             "the correction is empty"),
            (["feedback", "correct", "--prompt", "p", "--correction-file", empty],
             "the correction is empty"),
            (["feedback", "up", "--prompt", "", "--response", "r"], "the prompt is empty"),
            (["feedback", "correct", "--prompt", "p"], "--correction TEXT or "
                                                       "--correction-file FILE is required"),
            (["feedback", "down", "--prompt", "p"], "--response TEXT or --response-file FILE "
                                                    "is required"),
            (["feedback", "up", "--prompt", "p", "--response", "r", "--correction", "c"],
             "a correction goes with `sovmesh feedback correct`"),
            (["feedback", "correct", "--prompt-file", "-", "--correction-file", "-"],
             "only one text can come from stdin"),
            (["feedback", "up", "--prompt", "p", "--response", "r", "--bogus"],
             "feedback up: unknown option '--bogus'"),
            (["feedback", "up", "--response", "r", "--prompt"], "--prompt needs a value"),
            (["feedback", "up", "--prompt", "two", "words", "--response", "r"],
             "unexpected argument 'words'"),
            (["fl"], "Usage: sovmesh fl status"),
            (["fl", "bogus"], "unknown command 'fl bogus'"),
            (["fl", "status", "extra"], "fl status: unexpected argument 'extra'"),
            (["budget", "bogus"], "budget: unexpected argument 'bogus'"),
            (["budget", "new-period", "--yes", "--total", "abc"], "--total 'abc' is not a "
                                                                   "number > 0"),
            (["budget", "new-period", "--yes", "--total", "0"], "is not a number > 0"),
            (["budget", "new-period", "--yes", "extra"], "unexpected argument 'extra'"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                self.assert_usage_error(args, message, stdin="x")
        # Not a usage error, and nothing sent either.
        r = self.cli("feedback", "correct", "--prompt-file", os.path.join(self.dir, "nope"),
                     "--correction", "c")
        self.assertEqual(r.returncode, 1)
        self.assertIn("--prompt-file %s: No such file" % os.path.join(self.dir, "nope"),
                      r.stderr)
        r = self.cli("feedback", "up", "--prompt-file", self.file("nul.txt", b"a\0b"),
                     "--response", "r")
        self.assertEqual(r.returncode, 1)
        self.assertIn("contains a NUL byte", r.stderr)
        r = self.cli("feedback", "up", "--prompt-file", self.file("latin1.txt", b"caf\xe9"),
                     "--response", "r")
        self.assertEqual(r.returncode, 1)
        self.assertIn("the prompt is not valid UTF-8", r.stderr)
        r = self.cli("feedback", "correct", "--prompt", "p", "--correction-file", "-",
                     stdin="y" * (1024 * 1024 + 1))
        self.assertEqual(r.returncode, 1)
        self.assertIn("--correction-file (stdin): larger than 1048576 bytes", r.stderr)
        st = self.status()
        self.assertEqual(st["samples_total"], 0, "a refused command stored a sample")
        self.assertEqual(self.json_of("budget")["period"], 1)

        # The daemon refuses a text over 64 KiB: exit 1 with its message.
        big = "x" * (64 * 1024 + 1)
        r = self.cli("feedback", "up", "--prompt", big, "--response", "r")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(r.stderr.strip(), "error: feedback: 'prompt' is longer than 65536 "
                                           "bytes")
        r = self.cli("feedback", "correct", "--prompt", "p", "--correction-file",
                     self.file("big.txt", big.encode()))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("'correction' is longer than 65536 bytes", r.stderr)
        self.assertEqual(self.status()["samples_total"], 0)

        # Help on stdout with exit 0; the offline tools still answer under `fl`.
        for args, text in [(["feedback", "--help"], "--prompt-file"),
                           (["feedback", "up", "--help"], "--correction-file"),
                           (["fl", "--help"], "sovmesh fl rollback"),
                           (["fl", "status", "--help"], "sovmesh fl status"),
                           (["budget", "--help"], "new-period"),
                           (["budget", "new-period", "--help"], "--yes"),
                           (["fl", "aggregate", "--help"], "sovmesh fl aggregate --method"),
                           (["fl", "noise", "--help"], "sovmesh fl noise --mechanism"),
                           (["--help"], "budget new-period")]:
            with self.subTest(args=args):
                r = self.cli(*args)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn(text, r.stdout)
        r = self.cli("fl", "aggregate")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--method NAME is required", r.stderr)

    def test_no_daemon(self):
        gone = os.path.join(self.dir, "nothing.sock")
        r = self.cli("feedback", "up", "--prompt", "p", "--response", "r", sock=gone)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot reach sovmeshd", r.stderr)
        for args in (["fl", "status"], ["budget"], ["fl", "rollback"],
                     ["budget", "new-period", "--yes"]):
            with self.subTest(args=args):
                r = self.cli(*args, sock=gone)
                self.assertEqual(r.returncode, 1)
                self.assertIn("cannot reach sovmeshd", r.stderr)
        # Without --yes the daemon is not even asked.
        r = self.cli("budget", "new-period", sock=gone)
        self.assertEqual(r.returncode, 2)
        self.assertIn("WARNING", r.stderr)
        self.assertNotIn("cannot reach", r.stderr)

    # ---- federated learning off ----

    # ---- the front door's POST /api/feedback ----

    def api(self, body, headers=None):
        """POST /api/feedback on the daemon's front door; (status, JSON)."""
        import http.client
        api = self.json_of("status")["inference"]["api"]
        host, port = api.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request("POST", "/api/feedback", data, h)
        r = c.getresponse()
        raw = r.read()
        c.close()
        return r.status, json.loads(raw) if raw.strip().startswith(b"{") else raw

    def test_front_door_feedback(self):
        self.boot("sync_after_n_samples = 100;")
        st, j = self.api({"prompt": "p1", "response": "r1", "rating": "up", "model": "m"})
        self.assertEqual((st, j["id"], j["pending"]), (200, 1, 1), j)
        st, j = self.api({"prompt": "p2", "response": "r2", "correction": "c2"})
        self.assertEqual((st, j["pending"]), (200, 2), j)
        bad = [
            (b"{not json", "not JSON"),
            (b"[1, 2]", "must be a JSON object"),
            ({"prompt": "p", "response": "r", "rating": "up", "extra": 1},
             "unknown field 'extra'"),
            ({"prompt": "p", "response": "r", "rating": "sideways"}, "'rating' must be"),
            ({"prompt": 5, "response": "r", "rating": "up"}, "'prompt' must be a string"),
            ({"response": "r", "rating": "up"}, "prompt"),
            ({"prompt": "p", "rating": "up"}, "response"),
            ({"prompt": "p", "response": "r"}, "correction"),
            ({"prompt": "x" * 70000, "response": "r", "rating": "down"}, "longer than"),
        ]
        for body, message in bad:
            with self.subTest(body=str(body)[:60]):
                st, j = self.api(body)
                self.assertEqual(st, 400, j)
                self.assertIn(message, j["error"])
        # Another site's page in the browser, and a DNS-rebinding Host.
        st, _ = self.api({"prompt": "p", "response": "r", "rating": "up"},
                         {"Origin": "https://evil.example"})
        self.assertEqual(st, 403)
        st, _ = self.api({"prompt": "p", "response": "r", "rating": "up"},
                         {"Host": "evil.example:11435"})
        self.assertEqual(st, 403)
        # Nothing of the refused ones was stored.
        self.assertEqual(self.status()["samples_total"], 2)

    def test_front_door_feedback_off(self):
        self.boot("enabled = false;")
        st, j = self.api({"prompt": "p", "response": "r", "rating": "up"})
        self.assertEqual(st, 404, j)
        self.assertIn("federated learning is off", j["error"])

    def test_federated_learning_off(self):
        self.boot("enabled = false;")
        r = self.ok("fl", "status")
        self.assertEqual(r.stdout, "federated learning: off "
                                   "(federated_learning.enabled = false)\n")
        self.assertEqual(self.json_of("fl", "status"), {"enabled": False})
        for args in (["feedback", "up", "--prompt", "p", "--response", "r"],
                     ["--json", "feedback", "correct", "--prompt", "p", "--correction", "c"],
                     ["budget"], ["fl", "rollback"], ["budget", "new-period", "--yes"]):
            with self.subTest(args=args):
                r = self.cli(*args)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn("federated learning is off", r.stderr)
                self.assertEqual(r.stdout, "")


class FakeDaemon:
    """A control socket that answers canned JSON and records requests."""

    def __init__(self, path, replies):
        self.replies = replies  # {(method, path): (status, obj)}
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                fake.requests.append((self.command, self.path,
                                      json.loads(body) if body else None))
                status, obj = fake.replies.get((self.command, self.path),
                                               (404, {"error": "no such endpoint"}))
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = answer

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def local(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


T0 = 1795700000
SYNCED_STATUS = {
    "enabled": True, "ready": True, "not_ready_reason": None,
    "samples_pending": 3, "samples_total": 12, "sync_after_n_samples": 5,
    "rounds_done": 2, "round_running": False,
    "last_round": {"id": 2, "started": T0 - 5, "finished": T0, "state": "done",
                   "samples": 5, "outcome": "synced with 2 of 2 peers (ε=1 spent)",
                   "peers_sent": 2, "epsilon": 1.0},
    "epsilon_spent": 2.0,
    "budget": {"period": 1, "total": 10.0, "spent": 2.0, "remaining": 8.0, "charges": 2},
    "adapter": {"current": "a000002", "previous": "a000001",
                "history": ["initial", "a000001", "a000002"]},
    "applied": {"state": "applied", "adapter": "a000002", "model": "llama3.2-sovmesh:1b",
                "base_model": "llama3.2:1b", "time": T0 + 2, "error": None},
    "plugins": {"trainer": "trainer-reference", "noise": "dp-laplace",
                "aggregator": "agg-fedavg"},
    "inbox_pending": 1, "deltas": {"sent": 4, "received": 4, "refused": 0, "aggregations": 2},
    "peers": {}, "noise_epsilon": 1.0, "noise_clip": 1.0,
}
BUDGET = {
    "period": 2, "period_started": T0 - 100, "total": 10.0, "spent": 6.0, "remaining": 4.0,
    "delta_spent": 0.0, "charges": 6,
    "history": [{"time": T0, "round": 9, "epsilon": 1.0, "delta": 0.0, "mechanism": "laplace",
                 "peers": ["aa" * 32, "bb" * 32], "period": 2},
                {"time": T0 - 50, "round": None, "epsilon": 0.5, "delta": 0.0,
                 "mechanism": "laplace", "peers": ["aa" * 32], "period": 2}],
    "periods": [{"period": 2, "started": T0 - 100, "total": 10.0, "spent": 6.0,
                 "reason": "sovmesh budget new-period"},
                {"period": 1, "started": T0 - 9000, "total": 10.0, "spent": 10.0,
                 "reason": "first period"}],
}


class FlCliFormatTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="sovmesh-fake-")
        self.sock = os.path.join(self.tmp.name, "control.sock")
        self.fake = FakeDaemon(self.sock, {})
        self.addCleanup(self.tmp.cleanup)
        self.addCleanup(self.fake.stop)

    def cli(self, *args, stdin=""):
        env = dict(os.environ)
        env.update(NO_SYSTEM_BUS)
        return subprocess.run([SOVMESH, "--socket", self.sock] + list(args), env=env,
                              input=stdin, capture_output=True, text=True, timeout=60)

    def reply(self, method, path, obj, status=200):
        self.fake.replies[(method, path)] = (status, obj)

    def test_status_synced(self):
        self.reply("GET", "/v1/fl/status", SYNCED_STATUS)
        r = self.cli("fl", "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, (
            "federated learning: on (trainer trainer-reference, noise dp-laplace, "
            "aggregator agg-fedavg)\n"
            "samples:       3 pending of 12 stored; a round runs every 5\n"
            "rounds:        2 done; last: #2 at %s, synced with 2 of 2 peers (ε=1 spent)\n"
            "privacy:       ε 2 of 10 spent, 8 remaining (period 1)\n"
            "adapter:       a000002 (previous a000001); applied as llama3.2-sovmesh:1b at %s\n"
            "deltas:        4 sent, 4 received, 0 refused; 1 waiting for aggregation\n")
            % (local(T0), local(T0 + 2)))
        self.assertEqual(self.fake.requests, [("GET", "/v1/fl/status", None)])

    def test_status_not_ready_failed_apply_running(self):
        st = json.loads(json.dumps(SYNCED_STATUS))
        st.update(ready=False, not_ready_reason="making the initial adapter",
                  round_running=True)
        st["last_round"].update(state="failed", outcome="training failed: boom", epsilon=0.0)
        st["applied"].update(state="failed", error="the backend refused the adapter")
        self.reply("GET", "/v1/fl/status", st)
        out = self.cli("fl", "status").stdout
        self.assertIn("not ready:     making the initial adapter\n", out)
        self.assertIn("last: #2 failed at %s, training failed: boom (ε=0 spent); a round is "
                      "running\n" % local(T0), out)
        self.assertIn("adapter:       a000002 (previous a000001); not applied: the backend "
                      "refused the adapter\n", out)
        st["applied"].update(state="pending", adapter="a000001")
        st["last_round"] = None
        st["rounds_done"] = 0
        st["round_running"] = False
        self.reply("GET", "/v1/fl/status", st)
        out = self.cli("fl", "status").stdout
        self.assertIn("rounds:        0 done\n", out)
        self.assertIn("; being applied to the backend as llama3.2-sovmesh:1b\n", out)

    def test_budget_with_history_and_earlier_periods(self):
        self.reply("GET", "/v1/budget", BUDGET)
        r = self.cli("budget")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0], "privacy budget: period 2, started %s" % local(T0 - 100))
        self.assertEqual(lines[1:5], ["spent:          ε 6 in 6 charges",
                                      "remaining:      ε 4", "total:          ε 10",
                                      "[############--------] 6.0 of 10.0 ε spent"])
        self.assertEqual(lines[5], "history (newest first):")
        self.assertEqual(lines[7].split(), local(T0).split() + ["2", "#9", "1", "laplace", "2"])
        self.assertEqual(lines[8].split(), local(T0 - 50).split() + ["2", "-", "0.5",
                                                                     "laplace", "1"])
        self.assertEqual(lines[9:], ["earlier periods:",
                                     "  period 1, started %s: ε 10 of 10 spent (first period)"
                                     % local(T0 - 9000)])
        # A sliver of ε still shows; more than the total fills the bar.
        for spent, bar in ((0.01, "#" + "-" * 19), (12.0, "#" * 20)):
            self.reply("GET", "/v1/budget", dict(BUDGET, spent=spent))
            self.assertIn("[%s]" % bar, self.cli("budget").stdout)

    def test_request_bodies(self):
        self.reply("POST", "/v1/feedback", {"id": 7, "pending": 2, "sync_after_n_samples": 5})
        r = self.cli("feedback", "up", "--prompt", "q", "--response", "a", "--model", "m")
        self.assertEqual(r.stdout, "feedback stored (sample 7); 3 of 5 samples until the "
                                   "next federated round\n")
        r = self.cli("feedback", "correct", "--prompt", "q", "--correction-file", "-",
                     stdin="line 1\nline 2\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.fake.requests, [
            ("POST", "/v1/feedback", {"prompt": "q", "response": "a", "rating": "up",
                                      "model": "m"}),
            ("POST", "/v1/feedback", {"prompt": "q", "correction": "line 1\nline 2\n",
                                      "rating": None})])
        self.fake.requests.clear()
        self.reply("POST", "/v1/budget/new-period", dict(BUDGET, period=3, spent=0.0,
                                                         remaining=10.0, history=[]))
        r = self.cli("budget", "new-period", "--total", "10", "--yes")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, "")
        self.assertEqual(self.fake.requests, [("POST", "/v1/budget/new-period",
                                               {"confirm": True, "total": 10.0})])
        self.fake.requests.clear()
        self.cli("budget", "new-period", "--yes")
        self.assertEqual(self.fake.requests, [("POST", "/v1/budget/new-period",
                                               {"confirm": True})])
        self.fake.requests.clear()
        self.reply("POST", "/v1/fl/rollback", {"rolled_back": "a000002", "current": "a000001",
                                               "adapter": {}})
        r = self.cli("fl", "rollback")
        self.assertEqual(r.stdout, "rolled back from a000002 to a000001; re-applying it to "
                                   "the backend\n")
        self.assertEqual(self.fake.requests, [("POST", "/v1/fl/rollback", None)])

    def test_daemon_errors_exit_1(self):
        self.reply("POST", "/v1/fl/rollback",
                   {"error": "an aggregation is running; try again in a moment"}, status=409)
        r = self.cli("fl", "rollback")
        self.assertEqual((r.returncode, r.stdout, r.stderr),
                         (1, "", "error: an aggregation is running; try again in a moment\n"))
        self.reply("GET", "/v1/budget", {"error": "cannot read the privacy ledger"}, status=500)
        r = self.cli("--json", "budget")
        self.assertEqual((r.returncode, r.stdout), (1, ""))
        self.assertIn("cannot read the privacy ledger", r.stderr)


if __name__ == "__main__":
    unittest.main()
