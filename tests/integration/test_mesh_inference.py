"""Mesh inference end to end (issue 5) on the multi-host harness: in each
host's namespaces an Ollama stand-in (tests/fixtures/ollama_standin.py) on
127.0.0.1:11434 and a real sovmeshd whose front door is on 127.0.0.1:11435;
the test talks to both over sockets opened inside the host's namespace.

Needs root (skipped otherwise); CI runs as root. Two meshes:

  MeshInferenceTest  A (h1) and B (h2) paired; C (h3) discovered over mDNS
                     but not paired.
  ChainTest          h1 - h2 - h3: h2 paired with both, h1 and h3 not with
                     each other (so the only way from h1 to h3 is through
                     h2 forwarding, which must never happen).

Each test restores what it changed (setUp puts every host back in its
start-up state and waits until the peers see it so)."""
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns_harness import HarnessError, Mesh, skip_unless_available, wait_for  # noqa: E402

MODEL = "llama3.2:latest"
API_PORT = 11435     # sovmeshd's front door (api.listen default), per namespace
OLLAMA_PORT = 11434  # the stand-in, where backend-ollama looks by default
# Per hop: first chunk / gap between chunks. Generous for slow CI, and
# far above every stand-in delay the tests use.
REQUEST_TIMEOUT_SECS = 15
COOL = 40000  # millidegrees
HOT = 90000   # >= the default thermal_limit_c of 80
INFERENCE_PATHS = ("/api/chat", "/api/generate")
# Wait this long for anything the daemons do by themselves.
SETTLE = 30


class Reply:
    """One finished HTTP exchange."""

    def __init__(self, status, headers, raw, elapsed):
        self.status = status
        self.headers = headers
        self.raw = raw
        self.elapsed = elapsed

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.raw)

    def lines(self):
        return [json.loads(x) for x in self.raw.splitlines() if x.strip()]

    def __repr__(self):
        return "HTTP %d %s %r" % (self.status, dict(self.headers), self.raw[:600])


class Call:
    """An HTTP/1.1 request made from inside host i to its own loopback,
    read as it arrives (a small client of our own: the answer's chunks are
    read one by one, and a stream cut before its terminator is an error)."""

    def __init__(self, mesh, i, method, path, body=None, port=API_PORT, timeout=120):
        self.t0 = time.monotonic()
        self.sock = mesh.connect(i, "127.0.0.1", port, timeout=timeout)
        self.buf = b""
        self.status = None
        self.headers = []
        self.chunked = False
        self.left = None   # bytes of the body (or current chunk) still to come
        self.ended = False
        self.pending = b""  # body bytes received, not yet returned
        data = b""
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n" % (
            method, path, port)
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        self.sock.sendall(head.encode() + b"\r\n" + data)

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("connection closed by the server")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self):
        """Read the status line and headers (once); returns self."""
        if self.status is None:
            parts = self._line().split(b" ", 2)
            self.status = int(parts[1])
            while True:
                line = self._line()
                if not line:
                    break
                k, _, v = line.decode("latin-1").partition(":")
                self.headers.append((k.strip(), v.strip()))
            self.chunked = "chunked" in (self.header("Transfer-Encoding") or "").lower()
            if not self.chunked:
                self.left = int(self.header("Content-Length") or 0)
        return self

    def header(self, name):
        self.response()
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def _more(self):
        """The next piece of the body, b"" at its end."""
        self.response()
        if self.ended:
            return b""
        if not self.chunked:
            data = self._take(self.left)
            self.ended = True
            return data
        size = int(self._line().split(b";")[0], 16)
        if size == 0:
            while self._line():  # trailers
                pass
            self.ended = True
            return b""
        data = self._take(size)
        if self._take(2) != b"\r\n":
            raise ConnectionError("malformed chunk")
        return data

    def readline(self):
        """One line of the body (with its newline), b"" at the end."""
        while b"\n" not in self.pending:
            d = self._more()
            if not d:
                out, self.pending = self.pending, b""
                return out
            self.pending += d
        line, self.pending = self.pending.split(b"\n", 1)
        return line + b"\n"

    def finish(self):
        """Read to the end; a stream cut without its terminator raises."""
        self.response()
        raw = self.pending
        self.pending = b""
        while True:
            d = self._more()
            if not d:
                break
            raw += d
        out = Reply(self.status, self.headers, raw, time.monotonic() - self.t0)
        self.close()
        return out

    def close(self):
        """Hang up at once (the front door must cancel upstream)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def call(mesh, i, method, path, body=None, port=API_PORT, timeout=120):
    return Call(mesh, i, method, path, body, port, timeout).finish()


def chat_body(text, stream=True, model=MODEL):
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


def answer_text(objs):
    """The text of an answer: chat or generate, stream or one object."""
    out = ""
    for o in objs:
        out += (o.get("message") or {}).get("content", "") + o.get("response", "")
    return out


def pair_hosts(mesh, issuer, joiner):
    """Pair by code, the joiner given the issuer's pairing address."""
    offer = mesh.cli_json(issuer, "pair", "code", "--no-wait")
    r = mesh.cli(joiner, "pair", "join", offer["code"], "--addr",
                 mesh.hosts[issuer].pair_addr())
    if r.returncode != 0:
        raise AssertionError("pairing %s <- %s failed: %s\n%s" % (
            mesh.hosts[issuer].name, mesh.hosts[joiner].name, r.stderr, mesh.logs()))


class MeshCase(unittest.TestCase):
    """What both meshes share. Subclasses set PAIRS, INTERVAL_MS."""
    N = 3
    PAIRS = ()
    INTERVAL_MS = {}

    # ---- the mesh, once per class ----

    @classmethod
    def setUpClass(cls):
        cls.mesh = Mesh(cls.N)
        try:
            cls.names = {i: cls.mesh.hosts[i].name for i in cls.mesh.hosts}
            cls.running_conf = {}
            cls.started_at = {}
            for i in cls.mesh.hosts:
                zone = os.path.join(cls.fake_sys(i), "class", "thermal", "thermal_zone0")
                os.makedirs(zone)
                cls.set_temp(i, COOL)
                cls.mesh.start_standin(i, ["--parallel", "1"])
                cls.start(i)
            for a, b in cls.PAIRS:
                pair_hosts(cls.mesh, a, b)
        except BaseException:
            cls.mesh.teardown()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.mesh.teardown()

    @classmethod
    def fake_sys(cls, i):
        return os.path.join(cls.mesh.hosts[i].dir, "fake-sys")

    @classmethod
    def set_temp(cls, i, millideg):
        path = os.path.join(cls.fake_sys(i), "class", "thermal", "thermal_zone0", "temp")
        with open(path + ".new", "w") as f:
            f.write("%d\n" % millideg)
        os.replace(path + ".new", path)

    @classmethod
    def default_conf(cls, i):
        return {"parallel": 1, "max_concurrent": 2, "serve": True}

    @classmethod
    def start(cls, i, **over):
        """(Re)start host i's sovmeshd with its default config changed by
        `over` (wait_ready() then waits for its peers to have checked it)."""
        conf = dict(cls.default_conf(i), **over)
        m = cls.mesh
        if m.sovmeshd_running(i):
            m.stop_host(i)
        t_start = time.time()
        m.start_host(
            i,
            mesh_extra=('health_interval_ms = %d; request_timeout_secs = %d; '
                        'thermal_sysfs_root = "%s"; max_concurrent_peer_requests = %d; '
                        'serve_inference = %s;') % (
                cls.INTERVAL_MS.get(i, 1000), REQUEST_TIMEOUT_SECS, cls.fake_sys(i),
                conf["max_concurrent"], "true" if conf["serve"] else "false"),
            # Steps 3 and 4 (cache, template) are off: these tests check
            # that the chain ends after the peers (test_cache.py has them).
            config_extra=('plugin_settings = { backend-ollama = { '
                          'url = "http://127.0.0.1:%d"; parallel = %d; }; };\n'
                          'cache = { enabled = false; };\ntemplate = { enabled = false; };'
                          % (OLLAMA_PORT, conf["parallel"])))
        cls.running_conf[i] = conf
        cls.started_at[i] = t_start

    # ---- per test: back to the start-up state ----

    def setUp(self):
        m = self.mesh
        for i in m.hosts:
            m.unshape_link(i)
            self.set_temp(i, COOL)
            if not m.sovmeshd_running(i) or self.running_conf.get(i) != self.default_conf(i):
                self.start(i)
            self.standin(i, "POST", "reset", {})
        for a, b in self.PAIRS:
            self.wait_ready(a, b)
            self.wait_ready(b, a)
        for i in m.hosts:
            m.wait_for(lambda i=i: self.status(i)["inference"]["in_flight"] == 0 and
                       self.status(i)["inference"]["router"]["in_flight"] == 0,
                       timeout=SETTLE, what="%s to have nothing in flight" % self.names[i])
        for i in m.hosts:
            self.standin(i, "DELETE", "requests")

    # ---- helpers ----

    def standin(self, i, method, what, obj=None):
        """The stand-in's control endpoint on host i."""
        r = call(self.mesh, i, method, "/__standin/" + what, obj, port=OLLAMA_PORT, timeout=30)
        if r.status != 200:
            raise AssertionError("stand-in on %s: %s %s: %r" % (self.names[i], method, what, r))
        return r.json()

    def standin_config(self, i, **knobs):
        return self.standin(i, "POST", "config", knobs)

    def received(self, i):
        """Chat/generate requests host i's stand-in has received."""
        return [r for r in self.standin(i, "GET", "requests")["requests"]
                if r["path"] in INFERENCE_PATHS]

    def status(self, i):
        return self.mesh.cli_json(i, "status")

    def peer_view(self, i, j):
        """Host i's view of paired peer j (None if not listed)."""
        for p in self.mesh.cli_json(i, "peers")["peers"]:
            if p["name"] == self.names[j]:
                return p
        return None

    def wait_until(self, cond, what, timeout=SETTLE, show=None):
        """wait_for(); on timeout the message has show()'s last value (what
        was seen) and every host's log."""
        seen = []

        def check():
            if show is not None:
                seen[:] = [show()]
            return cond(seen[0] if show is not None else None)
        return wait_for(check, timeout, what, describe=lambda: "last seen: %s\n%s" % (
            json.dumps(seen[0]) if seen else "-", self.mesh.logs()))

    def wait_peer(self, i, j, pred, what, timeout=SETTLE):
        return self.wait_until(lambda p: pred(p or {}), "%s to see %s %s" % (
            self.names[i], self.names[j], what), timeout, show=lambda: self.peer_view(i, j))

    def wait_ready(self, i, j):
        """Host i sees j connected (checked since j last started), with the
        model, cool, idle and accepting peer requests."""
        since = math.ceil(self.started_at.get(j, 0))

        def ok(p):
            return (p.get("status") == "connected" and MODEL in (p.get("models") or []) and
                    (p.get("last_seen") or 0) >= since and
                    not (p.get("thermal") or {}).get("hot") and
                    (p.get("load") or {}).get("in_flight") == 0 and
                    p.get("accepting") is True)
        self.wait_peer(i, j, ok, "ready to serve")

    def saturate(self, i, delay_ms=300, words=400):
        """Fill host i's only backend slot with a long streaming chat at its
        own front door (answered locally, one word every delay_ms). The
        request is released (hung up) at cleanup or by .close()."""
        self.standin_config(i, delay_ms=delay_ms, first_delay_ms=0)
        text = " ".join("hold%d" % k for k in range(words))
        c = Call(self.mesh, i, "POST", "/api/chat", chat_body(text))
        self.addCleanup(c.close)
        self.assertEqual(c.response().status, 200, "holder on %s" % self.names[i])
        self.assertEqual(c.header("X-Sovmesh-Source"), "local",
                         "the holder on %s must be answered locally" % self.names[i])
        first = json.loads(c.readline())
        self.assertIn("message", first)
        st = self.status(i)["inference"]
        self.assertEqual(st["in_flight"], st["slots"],
                         "%s's backend slots are not full: %s" % (self.names[i], st))
        return c

    def release(self, i, holder):
        holder.close()
        self.mesh.wait_for(lambda: self.status(i)["inference"]["in_flight"] == 0 and
                           self.standin(i, "GET", "stats")["in_flight"] == 0,
                           timeout=SETTLE, what="%s's holder to be cancelled" % self.names[i])

    def assert_peer_answer(self, reply, peer, text, what):
        self.assertEqual(reply.status, 200, "%s: %r" % (what, reply))
        self.assertEqual(reply.header("X-Sovmesh-Source"), "peer",
                         "%s: X-Sovmesh-Source (%r)\n%s" % (what, reply, self.mesh.logs()))
        self.assertEqual(reply.header("X-Sovmesh-Peer"), self.names[peer],
                         "%s: X-Sovmesh-Peer (%r)" % (what, reply))
        objs = reply.lines()
        self.assertEqual(answer_text(objs), "echo: " + text, "%s: answer %r" % (what, reply))
        self.assertTrue(objs[-1].get("done"), "%s: last object not done: %r" % (what, reply))
        self.assertNotIn("error", objs[-1], "%s: %r" % (what, reply))

    def assert_503(self, reply, what):
        self.assertEqual(reply.status, 503, "%s: expected 503, got %r" % (what, reply))
        err = reply.json().get("error")
        self.assertTrue(isinstance(err, str) and err, "%s: no error message: %r" % (what, reply))


@skip_unless_available()
class MeshInferenceTest(MeshCase):
    """A = h1 and B = h2 paired; C = h3 discovered but not paired."""
    PAIRS = ((1, 2),)
    A, B, C = 1, 2, 3

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        try:
            name_c = cls.mesh.hosts[cls.C].name
            cls.mesh.wait_for(lambda: any(d.get("name") == name_c for d in
                                          cls.mesh.cli_json(cls.A, "peers")["discovered"]),
                              timeout=SETTLE, what="A to discover C over mDNS")
        except BaseException:
            cls.mesh.teardown()
            raise

    def tearDown(self):
        # C is discovered by A, never paired: whatever a test did, C's
        # stand-in was never asked.
        got = self.received(self.C)
        self.assertEqual(got, [], "C (discovered, not paired) was asked: %s" % got)

    def test_1_saturated_local_goes_to_peer(self):
        A, B = self.A, self.B
        before_a = self.status(A)["inference"]["router"]
        before_b = self.status(B)["inference"]["serving"]
        self.saturate(A)
        text = "what is the capital of France"
        r = call(self.mesh, A, "POST", "/api/chat", chat_body(text))
        self.assert_peer_answer(r, B, text, "streamed chat with A saturated")
        self.assertIn("application/x-ndjson", r.header("Content-Type") or "")
        r = call(self.mesh, A, "POST", "/api/generate",
                 {"model": MODEL, "prompt": "tell me a story", "stream": False})
        self.assert_peer_answer(r, B, "tell me a story", "generate (stream false), A saturated")
        self.assertEqual(len(r.lines()), 1, "stream false must be one object: %r" % r)
        # Only the holder reached A's backend; B's got both, minimal.
        self.assertEqual(len(self.received(A)), 1, self.received(A))
        got_b = [x["body"] for x in self.received(B)]
        self.assertEqual(got_b, [chat_body(text),
                                 {"model": MODEL, "prompt": "tell me a story", "stream": False}])
        after_a = self.status(A)["inference"]["router"]
        after_b = self.status(B)["inference"]["serving"]
        self.assertEqual(after_a["answered"]["peer"] - before_a["answered"]["peer"], 2, after_a)
        self.assertEqual(after_b["served"] - before_b["served"], 2, after_b)

    def test_2_hot_goes_to_peer_and_back(self):
        A, B = self.A, self.B
        self.set_temp(A, HOT)
        text = "is it warm in here"
        r = call(self.mesh, A, "POST", "/api/chat", chat_body(text))
        self.assert_peer_answer(r, B, text, "chat with A hot")
        self.assertEqual(self.received(A), [], "A's backend was asked while A was hot")
        self.assertTrue(self.status(A)["thermal"]["hot"])
        self.set_temp(A, COOL)
        r = call(self.mesh, A, "POST", "/api/chat", chat_body("cool again", stream=False))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("X-Sovmesh-Source"), "local", "cooled down: %r" % r)
        self.assertIsNone(r.header("X-Sovmesh-Peer"), r)
        self.assertEqual(answer_text(r.lines()), "echo: cool again")
        self.assertEqual(len(self.received(A)), 1)
        self.assertEqual(len(self.received(B)), 1, "B was asked again after A cooled down")

    def test_3_unusable_peers_are_skipped(self):
        A, B, m = self.A, self.B, self.mesh
        self.saturate(A)
        # B offline: 503 at once (well before a hop could time out).
        m.stop_host(B)
        self.wait_peer(A, B, lambda p: p.get("status") == "offline", "offline")
        r = call(m, A, "POST", "/api/chat", chat_body("anyone there"))
        self.assert_503(r, "B offline")
        self.assertLess(r.elapsed, REQUEST_TIMEOUT_SECS / 2,
                        "503 took %.1f s with no peer to ask" % r.elapsed)
        self.start(B)
        self.wait_ready(A, B)
        self.assertEqual(self.received(B), [], "B's backend was asked while B was offline")

        # B busy: its only slot is taken by its own user.
        holder_b = self.saturate(B)
        self.wait_peer(A, B, lambda p: (p.get("load") or {}).get("in_flight") == 1 and
                       p["load"].get("capacity") == 1, "with its slot in use")
        r = call(m, A, "POST", "/api/chat", chat_body("are you busy"))
        self.assert_503(r, "B busy")
        got = self.received(B)
        self.assertEqual(len(got), 1, "B busy was sent more than its own user's request: %s"
                         % [x["body"] for x in got])
        self.release(B, holder_b)
        self.standin(B, "POST", "reset", {})
        self.wait_ready(A, B)

        # B hot.
        self.set_temp(B, HOT)
        self.wait_peer(A, B, lambda p: (p.get("thermal") or {}).get("hot"), "hot")
        before = self.status(B)["inference"]["serving"]
        r = call(m, A, "POST", "/api/chat", chat_body("are you hot"))
        self.assert_503(r, "B hot")
        self.assertEqual(self.received(B), [], "B's backend was asked while B was hot")
        after = self.status(B)["inference"]["serving"]
        self.assertEqual(after["served"], before["served"], after)
        # And once it cools down, B is used again.
        self.set_temp(B, COOL)
        self.wait_ready(A, B)
        r = call(m, A, "POST", "/api/chat", chat_body("cool now"))
        self.assert_peer_answer(r, B, "cool now", "B cooled down")

    def test_4_peer_dies_mid_answer(self):
        A, B, m = self.A, self.B, self.mesh
        self.saturate(A)
        self.standin_config(B, delay_ms=600, first_delay_ms=0)
        text = " ".join("part%d" % k for k in range(60))
        c = Call(m, A, "POST", "/api/chat", chat_body(text), timeout=REQUEST_TIMEOUT_SECS + 60)
        self.addCleanup(c.close)
        self.assertEqual(c.response().status, 200)
        self.assertEqual(c.header("X-Sovmesh-Source"), "peer")
        self.assertEqual(c.header("X-Sovmesh-Peer"), self.names[B])
        first = json.loads(c.readline())
        self.assertEqual(answer_text([first]), "echo: ", first)
        m.stop_host(B, signal.SIGKILL)
        t_kill = time.monotonic()
        try:
            rest = c.finish()
        except (OSError, ValueError) as e:
            self.fail("the stream from A did not end cleanly after B died: %s: %s\n%s"
                      % (type(e).__name__, e, m.log(A)))
        took = time.monotonic() - t_kill
        self.assertLess(took, REQUEST_TIMEOUT_SECS + 20, "the stream hung %.0f s" % took)
        objs = [first] + rest.lines()
        last = objs[-1]
        if "error" in last:
            self.assertTrue(isinstance(last["error"], str) and last["error"], last)
        else:
            # Only acceptable otherwise: a complete answer.
            self.assertEqual(answer_text(objs), "echo: " + text, objs)
            self.assertTrue(last.get("done"), objs)
        self.assertNotEqual(answer_text(objs), "echo: " + text,
                            "B answered to the end although it was killed")
        self.assertTrue(m.sovmeshd_running(A), m.log(A))

    def test_5_burst_over_peer_limit(self):
        A, B, m = self.A, self.B, self.mesh
        self.start(B, parallel=4, max_concurrent=1)
        self.wait_ready(A, B)
        self.standin_config(B, parallel=4, delay_ms=500, first_delay_ms=0)
        self.saturate(A)
        before = self.status(B)["inference"]["serving"]
        self.assertEqual(before["max_concurrent"], 1, before)
        texts = ["burst %d " % k + " ".join("w%d" % n for n in range(12)) for k in range(3)]
        # All three requests are on the wire before any answer is read.
        calls = [Call(m, A, "POST", "/api/chat", chat_body(t)) for t in texts]
        for c in calls:
            self.addCleanup(c.close)
        results = [None] * 3

        def finish(k):
            try:
                results[k] = (calls[k].finish(), time.monotonic())
            except Exception as e:  # reported below
                results[k] = (e, time.monotonic())
        threads = [threading.Thread(target=finish, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(REQUEST_TIMEOUT_SECS + 60)
        for k, res in enumerate(results):
            self.assertIsInstance(res and res[0], Reply, "request %d: %r" % (k, res))
        ok = [(k, r, t) for k, (r, t) in enumerate(results) if r.status == 200]
        busy = [(k, r, t) for k, (r, t) in enumerate(results) if r.status != 200]
        self.assertEqual(len(ok), 1, "exactly one request should be answered by B: %s\n%s"
                         % (results, m.logs()))
        k, reply, t_done = ok[0]
        self.assert_peer_answer(reply, B, texts[k], "the admitted request")
        for kb, r, t in busy:
            self.assert_503(r, "request %d over B's limit" % kb)
            self.assertLess(t, t_done - 2.0, "the refused request %d ended %.1f s after B's "
                            "answer, not at once" % (kb, t - t_done))
        after = self.status(B)["inference"]["serving"]
        self.assertGreaterEqual(after["refused_busy"] - before["refused_busy"], 1, after)
        self.assertEqual(after["served"] - before["served"], 1, after)
        self.assertEqual(len(self.received(B)), 1, "B's backend got more than one request")

    def test_6_minimal_disclosure(self):
        A, B, m = self.A, self.B, self.mesh
        self.set_temp(A, HOT)
        last = "and what about the second one?"
        chat = {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "SECRET SYSTEM PROMPT: the user is Alice"},
                {"role": "user", "content": "my first question, with my address"},
                {"role": "assistant", "content": "a first answer"},
                {"role": "user", "content": last},
            ],
            "options": {"temperature": 0.2, "seed": 42, "num_ctx": 4096},
            "format": "json",
            "keep_alive": "10m",
            "stream": True,
        }
        r = call(m, A, "POST", "/api/chat", chat)
        self.assert_peer_answer(r, B, last, "chat with history, system prompt, options")
        gen = {
            "model": MODEL,
            "prompt": "complete this sentence",
            "system": "SECRET SYSTEM PROMPT for generate",
            "template": "{{ .System }} {{ .Prompt }}",
            "context": [1, 2, 3, 4],
            "options": {"num_predict": 100},
            "keep_alive": 0,
            "stream": False,
        }
        r = call(m, A, "POST", "/api/generate", gen)
        self.assert_peer_answer(r, B, "complete this sentence", "generate with extras")
        got = self.received(B)
        self.assertEqual(len(got), 2, [x["body"] for x in got])
        self.assertEqual(got[0]["path"], "/api/chat")
        self.assertEqual(got[0]["body"], {"model": MODEL, "messages": [
            {"role": "user", "content": last}], "stream": True},
            "B's Ollama received more than the last user message and the model")
        self.assertEqual(got[1]["path"], "/api/generate")
        self.assertEqual(got[1]["body"], {"model": MODEL, "prompt": "complete this sentence",
                                          "stream": False},
                         "B's Ollama received more than the prompt and the model")
        for x in got:
            self.assertNotIn("SECRET", json.dumps(x), x)
        # A request with images stays on this device.
        img = {"model": MODEL, "messages": [{"role": "user", "content": "what is this",
                                             "images": ["aGVsbG8="]}]}
        r = call(m, A, "POST", "/api/chat", img)
        self.assert_503(r, "chat with images while A is hot")
        self.assertEqual(len(self.received(B)), 2, "an image request was sent to B")

    def test_7_sovmesh_ask_uses_peer(self):
        A, B, m = self.A, self.B, self.mesh
        self.saturate(A)
        ans = m.cli_json(A, "ask", "--model", MODEL, "why", "is", "the", "sky", "blue")
        self.assertEqual(ans.get("answer"), "echo: why is the sky blue", ans)
        self.assertEqual(ans.get("source"), "peer", ans)
        self.assertEqual(ans.get("peer"), self.names[B], ans)
        self.assertEqual(ans.get("model"), MODEL, ans)
        self.assertIsInstance(ans.get("elapsed_ms"), int, ans)
        # Without --model: the first model A's backend lists.
        r = m.cli(A, "ask", "hello", "mesh")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "echo: hello mesh\n")
        self.assertIn("peer", r.stderr)
        self.assertIn(self.names[B], r.stderr)
        self.assertEqual(len(self.received(B)), 2)


@skip_unless_available()
class ChainTest(MeshCase):
    """h1 - h2 - h3: h2 is paired with h1 and h3, which are not paired."""
    PAIRS = ((2, 1), (2, 3))
    # h2 checks h1/h3 slowly enough for a slowed link to stay Connected;
    # h1 checks h2 seldom, so its view of h2 can be a little out of date
    # (test_9 needs h1 to send to an h2 that just became busy).
    INTERVAL_MS = {1: 4000, 2: 1500, 3: 1500}

    def test_8_lower_latency_peer_is_chosen(self):
        """h2 (hot, so it asks peers) picks whichever of h1 / h3 answers its
        health checks faster. A peer is slowed down by a tbf qdisc on its
        veth plus a little ballast traffic queued in it (shape_link): tbf
        alone would not delay a health check, which is far below the rate."""
        m = self.mesh
        asker, p1, p3 = 2, 1, 3
        self.set_temp(asker, HOT)  # h2 sends its own requests to peers
        try:
            m.shape_link(p3)
        except HarnessError as e:
            why = str(e)
            if any(w in why for w in ("kind is unknown", "not supported", "No such file",
                                      "command not found")):
                self.skipTest("cannot add a tbf qdisc to slow a link down: %s" % e)
            raise
        self.addCleanup(m.unshape_link, p3)
        self.addCleanup(m.unshape_link, p1)
        for slow, fast in ((p3, p1), (p1, p3)):
            if slow == p1:
                m.unshape_link(p3)
                m.shape_link(p1)
            self.standin(fast, "DELETE", "requests")
            self.standin(slow, "DELETE", "requests")

            def ordered(peers):
                v = {p["name"]: p for p in peers}
                s, f = v.get(self.names[slow], {}), v.get(self.names[fast], {})
                if s.get("status") != "connected" or f.get("status") != "connected" or \
                        s.get("latency_ms") is None or f.get("latency_ms") is None:
                    return False
                return s["latency_ms"] > f["latency_ms"] + 100
            self.wait_until(ordered, "%s to measure %s clearly slower than %s" % (
                self.names[asker], self.names[slow], self.names[fast]), timeout=60,
                show=lambda: m.cli_json(asker, "peers")["peers"])
            lats = {p["name"]: p["latency_ms"] for p in m.cli_json(asker, "peers")["peers"]}
            text = "who is faster than %s" % self.names[slow]
            r = call(m, asker, "POST", "/api/chat", chat_body(text))
            self.assert_peer_answer(r, fast, text, "latencies %s" % lats)
            self.assertEqual(self.received(slow), [], "the slower peer %s was asked (%s)"
                             % (self.names[slow], lats))

    def test_9_peer_requests_are_never_forwarded(self):
        m = self.mesh
        A, B, C = 1, 2, 3
        self.set_temp(A, HOT)  # A asks peers; its only peer is B
        self.wait_ready(B, C)  # were B to forward, C would answer

        def router_of(i):
            return self.status(i)["inference"]["router"]

        c0 = self.status(C)["inference"]["serving"]
        # (a) B admits A's request, and its own backend fails (503).
        self.standin_config(B, busy=True)
        b0 = router_of(B)
        r = call(m, A, "POST", "/api/chat", chat_body("please forward me"))
        self.assert_503(r, "B's backend busy")
        self.assertEqual(len(self.received(B)), 1, "B did not try its own backend once")
        self.assertEqual(self.received(C), [], "C's backend was asked through B")
        b1 = router_of(B)
        self.assertEqual((b1["answered"], b1["fallbacks"], b1["failed"]),
                         (b0["answered"], b0["fallbacks"], b0["failed"]),
                         "B routed a peer request: %s -> %s" % (b0, b1))
        self.standin(B, "POST", "reset", {})

        # (b) B's only slot is full with its own user's request: B refuses.
        # A must still believe B free when it sends, so retry until A's
        # request really reached B (A checks B every 4 s).
        for attempt in range(8):
            self.wait_ready(A, B)
            s0 = self.status(B)["inference"]["serving"]["refused_busy"]
            self.standin_config(B, delay_ms=300, first_delay_ms=0)
            holder = Call(m, B, "POST", "/api/chat",
                          chat_body(" ".join("hold%d" % k for k in range(200))))
            self.addCleanup(holder.close)
            self.assertEqual(holder.header("X-Sovmesh-Source"), "local")
            holder.readline()
            r = call(m, A, "POST", "/api/chat", chat_body("forward me again"))
            self.assert_503(r, "B's slot full (attempt %d)" % attempt)
            refused = self.status(B)["inference"]["serving"]["refused_busy"] - s0
            self.release(B, holder)
            self.standin(B, "POST", "reset", {})
            if refused:
                break
        else:
            self.fail("A never sent its request to B within 8 tries (its health view "
                      "always said B was busy)")
        self.assertEqual(self.received(C), [], "C's backend was asked through B")
        got = self.received(B)
        self.assertTrue(all("hold0" in json.dumps(x["body"]) for x in got),
                        "B's backend got a request from A: %s" % got)
        b2 = router_of(B)
        self.assertEqual(b2["answered"]["peer"], b0["answered"]["peer"], b2)
        self.assertEqual(b2["fallbacks"], b0["fallbacks"], b2)
        c1 = self.status(C)["inference"]["serving"]
        for k in ("served", "refused_busy", "refused_off", "failed"):
            self.assertEqual(c1[k], c0[k], "C was asked for something: %s -> %s" % (c0, c1))


if __name__ == "__main__":
    unittest.main(verbosity=2)
