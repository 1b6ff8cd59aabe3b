"""Steps 3 and 4 of the fallback chain with a real daemon (issue 6): an
answer is cached; with the backend down and no peers the same question and
a paraphrase are answered from the cache, a related question gets the
template quoting the near miss, an unrelated one the plain template; the
cache survives a restart and kill -9; entries expire; the LRU bound holds;
a corrupt database is set aside with a clear error while the daemon keeps
answering; `sovmesh cache stats|clear` and `sovmesh ask`.

The question pairs come from tests/data/paraphrase_pairs.tsv with their
built-in-embedding similarities (tools/cache_thresholds --scores): 0.85
(a hit at the default 0.83) and 0.78 (a near miss above 0.43)."""
import http.client
import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import PLUGIN_DIR, SOURCE_ROOT, SOVMESH, DaemonTestCase, run  # noqa: E402

sys.path.insert(0, os.path.join(SOURCE_ROOT, "tests", "fixtures"))
from ollama_standin import StandIn  # noqa: E402

MODEL = "llama3.2"
HIT_Q, HIT_PARAPHRASE = "what is a good credit score", "what counts as a good credit score"
NEAR_Q, NEAR_OTHER = "why is the sky blue", "what makes the sky blue?"
UNRELATED = "how do I tie a tie"
TEMPLATE_TEXT = "Limited right now, sorry."


class CacheTest(DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.standin = StandIn(["--quiet"]).start()
        self.addCleanup(lambda: self.standin.stop())
        self.state = os.path.join(self.dir, "state")
        self.sock = os.path.join(self.state, "control.sock")
        self.daemon = None

    def boot(self, cache_settings=None, extra=""):
        self.conf = os.path.join(self.dir, "sovmeshd.conf")
        with open(self.conf, "w") as f:
            f.write("""
node = { name = "cachetest"; state_dir = "%s"; plugin_path = ["%s"]; };
mesh = { enabled = false; peer_listen = "127.0.0.1:0"; };
api = { listen = "127.0.0.1:0"; };
pairing = { listen = "127.0.0.1:0"; };
federated_learning = { enabled = false; };
template = { text = "%s"; near_miss_text = "Limited; about {question}: {answer}"; };
plugin_settings = {
  backend-ollama = { url = "%s"; connect_timeout_ms = 2000; };
  %s
};
%s
""" % (self.state, PLUGIN_DIR, TEMPLATE_TEXT, self.standin.url,
       "cache-semantic = { %s };" % cache_settings if cache_settings else "", extra))
        self.daemon = self.start(["-c", self.conf])
        self.daemon.wait_for_socket(self.sock)
        st = self.cli_json("status")
        self.api = st["inference"]["api"]
        # The backend's model list is in (the chain asks local first).
        deadline = time.time() + 30
        while not self.cli_json("status")["inference"]["models"]:
            self.assertLess(time.time(), deadline, self.daemon.log())
            time.sleep(0.1)

    def cli_json(self, *args):
        r = run([SOVMESH, "--socket", self.sock, "--json"] + list(args), timeout=90)
        self.assertEqual(r.returncode, 0, "%s: %s\n%s" % (args, r.stderr, self.daemon.log()))
        return json.loads(r.stdout)

    def chat(self, text, stream=False):
        """POST /api/chat; returns (source header, degraded header, content, body)."""
        host, port = self.api.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        body = json.dumps({"model": MODEL, "stream": stream,
                           "messages": [{"role": "user", "content": text}]})
        c.request("POST", "/api/chat", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read().decode()
        c.close()
        self.assertEqual(r.status, 200, data + "\n" + self.daemon.log())
        lines = [json.loads(x) for x in data.splitlines() if x.strip()]
        content = "".join(x.get("message", {}).get("content", "") for x in lines)
        return (r.getheader("X-Sovmesh-Source"), r.getheader("X-Sovmesh-Degraded"), content,
                lines[-1])

    def backend_down(self):
        """Stop the stand-in: refusing new connections is not enough, the
        backend keeps its keep-alive connection open."""
        if self.standin.proc is not None:
            self.port = self.standin.port
            self.standin.stop()

    def backend_up(self):
        """The stand-in again, on the same port."""
        if self.standin.proc is None:
            self.standin = StandIn(["--quiet"], port=self.port).start()

    def entries(self):
        return self.cli_json("cache", "stats")["plugin_stats"]["entries"]

    # ---- the chain ----

    def test_hit_paraphrase_near_miss_template(self):
        self.boot()
        src, _, content, _ = self.chat(HIT_Q)
        self.assertEqual((src, content), ("local", "echo: " + HIT_Q))
        src, _, _, _ = self.chat(NEAR_Q, stream=True)
        self.assertEqual(src, "local")
        self.assertEqual(self.entries(), 2)

        self.backend_down()
        # The same question and a paraphrase: the cached answer.
        for q in (HIT_Q, HIT_PARAPHRASE):
            src, degraded, content, last = self.chat(q)
            self.assertEqual(src, "cache", q)
            self.assertIsNone(degraded)
            self.assertEqual(content, "echo: " + HIT_Q)
            self.assertEqual(last["sovmesh"]["source"], "cache")
            self.assertIs(last["done"], True)
        # Streaming clients get the same, as one final chunk.
        src, _, content, _ = self.chat(HIT_PARAPHRASE, stream=True)
        self.assertEqual((src, content), ("cache", "echo: " + HIT_Q))
        # Similar but not the same question: the template quotes it.
        src, degraded, content, last = self.chat(NEAR_OTHER)
        self.assertEqual((src, degraded), ("template", "true"))
        self.assertEqual(content, "Limited; about %s: echo: %s" % (NEAR_Q, NEAR_Q))
        self.assertIs(last["sovmesh"]["degraded"], True)
        # Unrelated: the plain template.
        src, degraded, content, _ = self.chat(UNRELATED)
        self.assertEqual((src, degraded, content), ("template", "true", TEMPLATE_TEXT))
        # Templates and cache answers are never stored.
        self.assertEqual(self.entries(), 2)
        st = self.cli_json("status")["inference"]
        self.assertEqual(st["router"]["answered"]["cache"], 3)
        self.assertEqual(st["router"]["answered"]["template"], 2)
        # sovmesh ask takes the same chain.
        r = self.cli_json("ask", "--model", MODEL, HIT_PARAPHRASE)
        self.assertEqual((r["source"], r["answer"]), ("cache", "echo: " + HIT_Q))
        self.assertNotIn(HIT_Q, self.daemon.log())  # text is not logged at info

    def test_survives_restart_and_kill_9(self):
        self.boot()
        self.chat(HIT_Q)
        self.assertEqual(self.daemon.stop(), 0, self.daemon.log())
        self.backend_down()
        self.start_without_models_wait()
        src, _, content, _ = self.chat(HIT_Q)
        self.assertEqual((src, content), ("cache", "echo: " + HIT_Q))

        self.backend_up()
        self.chat(NEAR_Q)  # stored, then the daemon dies without a goodbye
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(timeout=30)
        self.backend_down()
        self.start_without_models_wait()
        src, _, content, _ = self.chat(NEAR_Q)
        self.assertEqual((src, content), ("cache", "echo: " + NEAR_Q))

    def start_without_models_wait(self):
        """Start with the backend down: its model list never arrives."""
        self.daemon = self.start(["-c", self.conf])
        self.daemon.wait_for_socket(self.sock)
        self.api = self.cli_json("status")["inference"]["api"]

    def test_expired_entry_misses(self):
        self.boot("ttl_secs = 1;")
        self.chat(HIT_Q)
        self.backend_down()
        time.sleep(2.5)
        src, _, content, _ = self.chat(HIT_Q)
        self.assertEqual((src, content), ("template", TEMPLATE_TEXT))

    def test_lru_bound(self):
        self.boot("max_entries = 2;")
        qs = ["how do I boil an egg", "what is the capital of peru", "who wrote hamlet"]
        for q in qs[:2]:
            self.assertEqual(self.chat(q)[0], "local")
        # The older one is used again, so the second is the least recently used.
        self.backend_down()
        self.assertEqual(self.chat(qs[0])[0], "cache")
        self.backend_up()
        self.assertEqual(self.chat(qs[2])[0], "local")
        self.assertEqual(self.entries(), 2)
        self.backend_down()
        self.assertEqual(self.chat(qs[1])[0], "template")
        self.assertEqual(self.chat(qs[0])[0], "cache")
        self.assertEqual(self.chat(qs[2])[0], "cache")
        self.assertEqual(self.cli_json("cache", "stats")["plugin_stats"]["evictions"], 1)

    def test_corrupt_database(self):
        db_dir = os.path.join(self.state, "cache-semantic")
        os.makedirs(db_dir, mode=0o700)
        with open(os.path.join(db_dir, "cache.db"), "wb") as f:
            f.write(b"this is not an SQLite database" * 100)
        self.boot()
        log = self.daemon.log()
        self.assertIn("cache.db", log)
        self.assertTrue(any(n.startswith("cache.db.corrupt-") for n in os.listdir(db_dir)),
                        os.listdir(db_dir))
        # The daemon answers, and the fresh cache works.
        self.assertEqual(self.chat(HIT_Q)[0], "local")
        self.backend_down()
        self.assertEqual(self.chat(HIT_Q)[0], "cache")
        self.assertEqual(self.chat(UNRELATED)[0], "template")

    def test_stats_and_clear(self):
        self.boot()
        self.chat(HIT_Q)
        self.chat(NEAR_Q)
        st = self.cli_json("cache", "stats")
        self.assertEqual(st["plugin_stats"]["entries"], 2)
        self.assertEqual(st["stored"], 2)
        r = run([SOVMESH, "--socket", self.sock, "cache", "stats"], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("entries:     2", r.stdout)
        r = run([SOVMESH, "--socket", self.sock, "cache", "clear"], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("removed 2 cached answers", r.stdout)
        self.assertEqual(self.entries(), 0)
        self.backend_down()
        self.assertEqual(self.chat(HIT_Q)[0], "template")
        r = run([SOVMESH, "--socket", self.sock, "cache", "bogus"], timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown subcommand", r.stderr)

    def test_cache_disabled(self):
        self.boot(extra="cache = { enabled = false; };")
        self.chat(HIT_Q)
        self.backend_down()
        self.assertEqual(self.chat(HIT_Q)[0], "template")
        self.assertFalse(self.cli_json("cache", "stats")["enabled"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
