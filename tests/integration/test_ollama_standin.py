"""The Ollama stand-in (tests/fixtures/ollama_standin.py) itself: every
endpoint and every knob, over loopback, with the stand-in as a subprocess.
Other tests trust it to behave like Ollama, so it is tested here first."""
import hashlib
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures"))
from ollama_standin import StandIn  # noqa: E402

MODEL = "llama3.2"


class StandInCase(unittest.TestCase):
    """One shared stand-in; each test starts from the default knobs and an
    empty request log."""

    @classmethod
    def setUpClass(cls):
        cls.si = StandIn(["--quiet", "--models", "llama3.2,qwen2:0.5b"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.si.stop()

    def setUp(self):
        self.si.reset()

    # -- helpers ---------------------------------------------------------

    def wait_for(self, pred, secs=10):
        deadline = time.monotonic() + secs
        while not pred():
            self.assertLess(time.monotonic(), deadline, "condition not reached in %d s" % secs)
            time.sleep(0.02)

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.si.port, timeout=timeout)

    def call(self, method, path, body=None, headers=None, raw=None):
        c = self.conn()
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        c.request(method, path, body=data, headers=headers or {})
        r = c.getresponse()
        payload = r.read()
        c.close()
        return r, payload

    def post(self, path, body, **kw):
        r, payload = self.call("POST", path, body, **kw)
        return r.status, payload

    def stream_lines(self, path, body, c=None):
        """POST and return (response, [(arrival time, parsed line)])."""
        c = c or self.conn()
        c.request("POST", path, body=json.dumps(body).encode())
        r = c.getresponse()
        out = []
        while True:
            line = r.readline()
            if not line:
                break
            out.append((time.monotonic(), json.loads(line)))
        c.close()
        return r, out

    # -- plain endpoints -------------------------------------------------

    def test_root_version_tags(self):
        r, p = self.call("GET", "/")
        self.assertEqual((r.status, p), (200, b"Ollama is running"))
        r, p = self.call("GET", "/api/version")
        self.assertEqual(json.loads(p), {"version": "0.5.7"})
        r, p = self.call("GET", "/api/tags")
        self.assertEqual(r.status, 200)
        models = json.loads(p)["models"]
        self.assertEqual([m["name"] for m in models], ["llama3.2:latest", "qwen2:0.5b"])
        for m in models:
            for key in ("name", "model", "modified_at", "size", "digest", "details"):
                self.assertIn(key, m)
            self.assertEqual(m["details"]["format"], "gguf")
        # The list can be changed while running.
        self.si.config(models=["mistral:7b"])
        r, p = self.call("GET", "/api/tags")
        self.assertEqual([m["name"] for m in json.loads(p)["models"]], ["mistral:7b"])

    def test_show_and_ps(self):
        st, p = self.post("/api/show", {"model": MODEL})
        self.assertEqual(st, 200)
        info = json.loads(p)
        self.assertEqual(info["details"]["family"], "llama")
        self.assertIn("FROM", info["modelfile"])
        self.assertEqual(info["model_info"]["llama.embedding_length"], 768)
        st, p = self.post("/api/show", {"model": "absent"})
        self.assertEqual(st, 404)
        # Nothing is loaded until a model is used; then ps lists it.
        self.si.config(models=["llama3.2", "fresh:1b"])
        r, p = self.call("GET", "/api/ps")
        self.assertNotIn("fresh:1b", [m["name"] for m in json.loads(p)["models"]])
        st, p = self.post("/api/generate", {"model": "fresh:1b"})
        last = json.loads(p.splitlines()[-1])
        self.assertEqual((last["done"], last["done_reason"]), (True, "load"))
        r, p = self.call("GET", "/api/ps")
        ps = {m["name"]: m for m in json.loads(p)["models"]}
        self.assertIn("fresh:1b", ps)
        self.assertIn("expires_at", ps["fresh:1b"])
        # keep_alive 0 with nothing to say unloads it.
        st, p = self.post("/api/generate", {"model": "fresh:1b", "keep_alive": 0, "stream": False})
        self.assertEqual(json.loads(p)["done_reason"], "unload")
        r, p = self.call("GET", "/api/ps")
        self.assertNotIn("fresh:1b", [m["name"] for m in json.loads(p)["models"]])

    # -- chat and generate -------------------------------------------------

    def test_chat_streams_word_by_word_with_delay(self):
        self.si.config(delay_ms=150)
        msgs = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": "why is the sky blue"}]
        r, lines = self.stream_lines("/api/chat", {"model": MODEL, "messages": msgs})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(r.getheader("Content-Type"), "application/x-ndjson")
        objs = [o for _, o in lines]
        body, final = objs[:-1], objs[-1]
        self.assertEqual([o["message"]["content"] for o in body],
                         ["echo: ", "why ", "is ", "the ", "sky ", "blue"])
        for o in body:
            self.assertEqual((o["model"], o["done"], o["message"]["role"]), (MODEL, False, "assistant"))
            self.assertRegex(o["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")
        self.assertTrue(final["done"])
        self.assertEqual(final["done_reason"], "stop")
        self.assertEqual(final["message"], {"role": "assistant", "content": ""})
        self.assertEqual(final["eval_count"], 6)
        for key in ("total_duration", "load_duration", "prompt_eval_count",
                    "prompt_eval_duration", "eval_duration"):
            self.assertIsInstance(final[key], int)
        # Chunks arrive one by one, not all at the end: 5 delays of 150 ms
        # separate the first content chunk from the last (loose bound, so a
        # client that is scheduled late on a busy machine still passes).
        self.assertGreaterEqual(lines[-2][0] - lines[0][0], 0.3)

    def test_chat_not_streamed(self):
        st, p = self.post("/api/chat", {"model": MODEL, "stream": False,
                                        "messages": [{"role": "user", "content": "hello world"}]})
        self.assertEqual(st, 200)
        obj = json.loads(p)
        self.assertEqual(obj["message"], {"role": "assistant", "content": "echo: hello world"})
        self.assertTrue(obj["done"])
        self.assertEqual(obj["eval_count"], 3)
        self.assertNotIn(b"\n", p.strip())

    def test_generate_stream_and_not(self):
        r, lines = self.stream_lines("/api/generate", {"model": "qwen2:0.5b", "prompt": "a b c"})
        objs = [o for _, o in lines]
        self.assertEqual("".join(o["response"] for o in objs), "echo: a b c")
        self.assertEqual(objs[-1]["response"], "")
        self.assertTrue(objs[-1]["done"])
        self.assertIn("context", objs[-1])
        st, p = self.post("/api/generate", {"model": "qwen2:0.5b", "prompt": "a b c", "stream": False})
        obj = json.loads(p)
        self.assertEqual((obj["response"], obj["done"], obj["done_reason"]), ("echo: a b c", True, "stop"))

    def test_reply_num_predict_and_format(self):
        self.si.config(reply="fixed words here")
        st, p = self.post("/api/generate", {"model": MODEL, "prompt": "x", "stream": False})
        self.assertEqual(json.loads(p)["response"], "fixed words here")
        st, p = self.post("/api/generate", {"model": MODEL, "prompt": "x", "stream": False,
                                            "options": {"num_predict": 2}})
        obj = json.loads(p)
        self.assertEqual((obj["response"], obj["done_reason"]), ("fixed words ", "length"))
        st, p = self.post("/api/chat", {"model": MODEL, "stream": False, "format": "json",
                                        "messages": [{"role": "user", "content": "q"}]})
        self.assertEqual(json.loads(json.loads(p)["message"]["content"]), {"reply": "fixed words here"})

    # -- embeddings -----------------------------------------------------------

    def test_embed(self):
        st, p = self.post("/api/embed", {"model": MODEL, "input": "why is the sky blue"})
        self.assertEqual(st, 200)
        one = json.loads(p)
        self.assertEqual(one["model"], MODEL)
        self.assertEqual(len(one["embeddings"]), 1)
        self.assertEqual(len(one["embeddings"][0]), 768)
        st, p = self.post("/api/embed", {"model": MODEL,
                                         "input": ["why is the sky blue", "why is the sky blue?", "pasta recipes"]})
        e = json.loads(p)["embeddings"]
        self.assertEqual(e[0], one["embeddings"][0])  # deterministic

        def dot(a, b):
            return sum(x * y for x, y in zip(a, b))
        self.assertAlmostEqual(dot(e[0], e[0]), 1.0, places=5)
        self.assertGreater(dot(e[0], e[1]), 0.8)
        self.assertLess(dot(e[0], e[2]), 0.5)
        self.si.config(embed_dim=16)
        st, p = self.post("/api/embed", {"model": MODEL, "input": ["x"]})
        self.assertEqual(len(json.loads(p)["embeddings"][0]), 16)
        st, p = self.post("/api/embeddings", {"model": MODEL, "prompt": "hello"})
        self.assertEqual(st, 200)
        self.assertEqual(list(json.loads(p)), ["embedding"])
        self.assertEqual(len(json.loads(p)["embedding"]), 16)

    # -- errors ----------------------------------------------------------------

    def test_errors_like_ollama(self):
        st, p = self.post("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "q"}]})
        self.assertEqual((st, json.loads(p)), (404, {"error": 'model "nope" not found, try pulling it first'}))
        st, p = self.post("/api/generate", {"model": "nope:7b", "prompt": "q"})
        self.assertEqual(st, 404)
        r, p = self.call("POST", "/api/chat", raw=b'{"model": ')
        self.assertEqual(r.status, 400)
        self.assertIn("error", json.loads(p))
        r, p = self.call("POST", "/api/chat", raw=b"")
        self.assertEqual((r.status, json.loads(p)), (400, {"error": "missing request body"}))
        st, p = self.post("/api/chat", {"messages": []})
        self.assertEqual((st, json.loads(p)), (400, {"error": "model is required"}))
        r, p = self.call("GET", "/api/nothing")
        self.assertEqual(r.status, 404)
        r, p = self.call("GET", "/api/chat")
        self.assertEqual(r.status, 404)
        # The bad body is still in the log, as it arrived.
        bad = [q for q in self.si.requests("/api/chat") if q["status"] == 400 and q["body"] is None]
        self.assertTrue(any(q.get("raw_body") == '{"model": ' for q in bad))

    def test_busy_503(self):
        self.si.config(busy=True)
        st, p = self.post("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "q"}]})
        self.assertEqual(st, 503)
        self.assertIn("server busy", json.loads(p)["error"])
        st, _ = self.post("/api/embed", {"model": MODEL, "input": "q"})
        self.assertEqual(st, 503)
        r, _ = self.call("GET", "/api/tags")  # metadata still answers
        self.assertEqual(r.status, 200)
        self.assertEqual([q["outcome"] for q in self.si.requests("/api/chat")], ["busy"])
        self.si.config(busy=False)
        st, _ = self.post("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "q"}]})
        self.assertEqual(st, 200)

    # -- the request log -----------------------------------------------------

    def test_request_log_is_exact(self):
        body = {"model": MODEL, "stream": False, "options": {"temperature": 0},
                "messages": [{"role": "user", "content": "only this"}]}
        st, _ = self.post("/api/chat", body, headers={"X-Probe": "42", "Content-Type": "application/json"})
        self.assertEqual(st, 200)
        self.call("GET", "/__standin/stats")  # control calls are not recorded
        reqs = self.si.requests()
        self.assertEqual(len(reqs), 1)
        q = reqs[0]
        self.assertEqual((q["method"], q["path"], q["status"], q["outcome"]), ("POST", "/api/chat", 200, "ok"))
        self.assertEqual(q["body"], body)
        self.assertEqual(q["headers"]["X-Probe"], "42")
        self.assertTrue(q["client"].startswith("127.0.0.1:"))
        self.si.clear()
        self.assertEqual(self.si.requests(), [])

    # -- parallel slots ---------------------------------------------------------

    def run_concurrently(self, n, body):
        results = [None] * n

        def one(i):
            try:
                results[i] = self.post("/api/chat", body)
            except Exception as e:  # reported by the assertion below
                results[i] = e
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        for t in threads:
            t.join(30)
        return results

    def test_parallel_slots_queue_silently(self):
        self.si.config(parallel=2, delay_ms=200)
        body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "a b"}]}
        results = self.run_concurrently(3, body)
        self.assertEqual([r[0] for r in results], [200, 200, 200])  # the third waited, no 503
        reqs = sorted(self.si.requests("/api/chat"), key=lambda q: q["started"])
        self.assertEqual(len(reqs), 3)
        first_done = min(q["finished"] for q in reqs[:2])
        self.assertGreaterEqual(reqs[2]["started"], first_done)
        self.assertEqual(self.si.stats()["max_in_flight"], 2)

    def test_parallel_full_queue_answers_503(self):
        self.si.config(parallel=1, max_queue=0, delay_ms=500)
        body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "a"}]}
        results = self.run_concurrently(2, body)
        self.assertEqual(sorted(r[0] for r in results), [200, 503])

    def test_queued_client_that_leaves_is_dropped(self):
        # A client that hangs up while waiting for a slot leaves the queue.
        self.si.config(parallel=1, delay_ms=500)
        body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "a b"}]}
        t = threading.Thread(target=self.post, args=("/api/chat", body))
        t.start()
        self.wait_for(lambda: self.si.stats()["in_flight"] == 1)
        c = self.conn()
        c.request("POST", "/api/chat", body=json.dumps(body).encode())
        self.wait_for(lambda: self.si.stats()["queued"] == 1)
        c.close()
        t.join(10)
        self.wait_for(lambda: not self.si.stats()["queued"] and not self.si.stats()["in_flight"])
        outcomes = sorted(q["outcome"] for q in self.si.requests("/api/chat"))
        self.assertEqual(outcomes, ["disconnected", "ok"])

    # -- failures mid-stream -----------------------------------------------------

    def test_fail_mid_stream_sends_error_line(self):
        self.si.config(fail_mid_stream=2)
        r, lines = self.stream_lines("/api/chat", {"model": MODEL,
                                                   "messages": [{"role": "user", "content": "one two three four"}]})
        objs = [o for _, o in lines]
        self.assertEqual(r.status, 200)
        self.assertEqual(len(objs), 3)
        self.assertEqual([o["message"]["content"] for o in objs[:2]], ["echo: ", "one "])
        self.assertEqual(list(objs[2]), ["error"])
        self.assertEqual(self.si.requests("/api/chat")[0]["outcome"], "failed_mid_stream")
        st, p = self.post("/api/chat", {"model": MODEL, "stream": False,
                                        "messages": [{"role": "user", "content": "x"}]})
        self.assertEqual(st, 500)
        self.assertIn("error", json.loads(p))

    def test_cut_mid_stream_closes_without_terminator(self):
        self.si.config(cut_mid_stream=1)
        c = self.conn()
        c.request("POST", "/api/generate", body=json.dumps({"model": MODEL, "prompt": "a b c"}).encode())
        r = c.getresponse()
        self.assertEqual(json.loads(r.readline())["response"], "echo: ")
        with self.assertRaises((http.client.IncompleteRead, ConnectionError)):
            r.read()
        c.close()

    def test_client_disconnect_is_noticed(self):
        self.si.config(delay_ms=200)
        c = self.conn()
        c.request("POST", "/api/chat", body=json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "a b c d e f g h"}]}).encode())
        r = c.getresponse()
        r.readline()
        c.close()
        r.close()
        self.wait_for(lambda: self.si.requests("/api/chat")[0]["outcome"] == "disconnected")
        self.assertEqual(self.si.stats()["in_flight"], 0)

    # -- /api/create with adapters ------------------------------------------------

    def test_create_with_adapter(self):
        blob = b"fake safetensors adapter"
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        r, _ = self.call("HEAD", "/api/blobs/" + digest)
        self.assertEqual(r.status, 404)
        # Creating before uploading fails as with Ollama.
        st, p = self.post("/api/create", {"model": "mine:ft", "from": MODEL,
                                          "adapters": {"adapter.safetensors": digest}})
        self.assertEqual(st, 400)
        r, _ = self.call("POST", "/api/blobs/" + digest, raw=b"other bytes")
        self.assertEqual(r.status, 400)
        r, _ = self.call("POST", "/api/blobs/" + digest, raw=blob)
        self.assertEqual(r.status, 201)
        r, _ = self.call("HEAD", "/api/blobs/" + digest)
        self.assertEqual(r.status, 200)
        r, lines = self.stream_lines("/api/create", {"model": "mine:ft", "from": MODEL,
                                                     "adapters": {"adapter.safetensors": digest}})
        statuses = [o["status"] for _, o in lines]
        self.assertEqual(statuses[-1], "success")
        self.assertIn("using existing layer " + digest, statuses)
        r, p = self.call("GET", "/api/tags")
        made = {m["name"]: m for m in json.loads(p)["models"]}["mine:ft"]
        self.assertEqual(made["details"]["parent_model"], "llama3.2:latest")
        st, p = self.post("/api/show", {"model": "mine:ft"})
        self.assertIn("ADAPTER " + digest, json.loads(p)["modelfile"])
        st, p = self.post("/api/chat", {"model": "mine:ft", "stream": False,
                                        "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual(st, 200)
        st, p = self.post("/api/create", {"model": "x", "from": "absent"})
        self.assertEqual(st, 404)
        st, p = self.post("/api/create", {"model": "mine:two", "from": MODEL, "stream": False})
        self.assertEqual(json.loads(p), {"status": "success"})

    # -- control endpoint ----------------------------------------------------------

    def test_control_rejects_unknown_knob(self):
        c = self.conn()
        c.request("POST", "/__standin/config", body=b'{"bogus": 1}')
        r = c.getresponse()
        self.assertEqual(r.status, 400)
        self.assertIn("bogus", json.loads(r.read())["error"])
        c.close()


def connect_refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


class LifecycleTest(unittest.TestCase):
    """Flags at start-up, refusing connections, signals."""

    def wait_for(self, pred, secs=5):
        deadline = time.monotonic() + secs
        while not pred():
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)

    def test_refuse_and_reopen(self):
        si = StandIn(["--quiet"]).start()
        try:
            self.assertFalse(connect_refused(si.port))
            si.refuse()  # SIGUSR1
            self.wait_for(lambda: connect_refused(si.port))
            si.accept()  # SIGUSR2, same port
            self.wait_for(lambda: not connect_refused(si.port))
            # Through the control endpoint, reopening by itself.
            si._control("POST", "refuse", {"ms": 400})
            self.wait_for(lambda: connect_refused(si.port))
            self.wait_for(lambda: not connect_refused(si.port))
            self.assertEqual(si.config()["version"], "0.5.7")
        finally:
            self.assertEqual(si.stop(), 0)

    def test_flags_at_startup(self):
        si = StandIn(["--quiet", "--refuse", "--busy", "--models", "a:1,b:2", "--embed-dim", "8",
                      "--parallel", "3", "--delay-ms", "5", "--version", "0.9.1"]).start()
        try:
            self.assertTrue(connect_refused(si.port))
            si.accept()
            self.wait_for(lambda: not connect_refused(si.port))
            cfg = si.config()
            self.assertEqual((cfg["models"], cfg["embed_dim"], cfg["parallel"], cfg["delay_ms"], cfg["busy"]),
                             (["a:1", "b:2"], 8, 3, 5, True))
            c = http.client.HTTPConnection("127.0.0.1", si.port, timeout=10)
            c.request("POST", "/api/generate", body=b'{"model":"a:1","prompt":"x"}')
            self.assertEqual(c.getresponse().status, 503)
            c.close()
        finally:
            si.stop()

    def test_sigterm_mid_stream_exits_cleanly(self):
        si = StandIn(["--quiet", "--delay-ms", "200"]).start()
        c = http.client.HTTPConnection("127.0.0.1", si.port, timeout=10)
        c.request("POST", "/api/generate", body=b'{"model":"llama3.2","prompt":"a b c d e f"}')
        c.getresponse().readline()
        pid = si.proc.pid
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(si.proc.wait(10), 0)
        si.stop()
        c.close()
        self.assertTrue(connect_refused(si.port))

    def test_bad_listen_address_is_one_clear_line(self):
        import subprocess
        p = subprocess.run([sys.executable, os.path.join(HERE, "..", "fixtures", "ollama_standin.py"),
                            "--listen", "nonsense"], capture_output=True, text=True, timeout=20)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--listen wants host:port", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
