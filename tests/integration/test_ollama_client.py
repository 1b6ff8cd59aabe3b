"""A real Ollama client library against sovmeshd's front door: the npm
package `ollama` (ollama-js, pinned in tests/js/package-lock.json) runs
tests/js/ollama_client_check.mjs against a daemon whose local backend is
the Ollama stand-in, and against a second, backend-less daemon paired with
the first, so every answer takes the peer hop (DESIGN.md §5 "Any Ollama
client pointed at sovmeshd works unchanged", §6.5).

Needs node (18 or later) and npm; tools/quickstart.sh installs them. If
tests/js/node_modules is missing or stale, this runs `npm ci` there first
(the npm registry must be reachable then)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import (PLUGIN_DIR, SOURCE_ROOT, SOVMESH, START_TIMEOUT,  # noqa: E402
                             DaemonTestCase, run)

sys.path.insert(0, os.path.join(SOURCE_ROOT, "tests", "fixtures"))
from ollama_standin import StandIn, embed  # noqa: E402

JS_DIR = os.path.join(SOURCE_ROOT, "tests", "js")
CHECK = os.path.join(JS_DIR, "ollama_client_check.mjs")
EMBED_DIM = 384  # not Ollama's usual 768: the answer must be the stand-in's
MODELS = ["llama3.2:latest", "qwen2:0.5b"]
ALL_STEPS = ["chat", "chat_stream", "generate", "list", "embed", "missing_model"]

_node_ready = None  # None: not checked yet; "": ready; else why not


def node_ready():
    """'' if node, npm and the pinned ollama package are usable, else the
    reason; runs `npm ci` once when node_modules is absent or stale."""
    global _node_ready
    if _node_ready is not None:
        return _node_ready
    _node_ready = _prepare_node()
    return _node_ready


def _prepare_node():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return ("node and npm are needed (Debian packages nodejs and npm; "
                "tools/quickstart.sh installs them)")
    r = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60)
    m = re.match(r"v(\d+)\.", r.stdout.strip())
    if not m or int(m.group(1)) < 18:
        return "node 18 or later is needed, found %r" % r.stdout.strip()
    with open(os.path.join(JS_DIR, "package-lock.json")) as f:
        want = json.load(f)["packages"]["node_modules/ollama"]["version"]
    installed = os.path.join(JS_DIR, "node_modules", "ollama", "package.json")
    have = None
    if os.path.exists(installed):
        with open(installed) as f:
            have = json.load(f).get("version")
    if have != want:
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            return "npm ci in %s failed (exit %d):\n%s" % (JS_DIR, r.returncode,
                                                          (r.stdout + r.stderr)[-3000:])
    return ""


class Node:
    """One sovmeshd on 127.0.0.1 with its own state dir; `backend` is the
    stand-in's URL, or None for inference.backend = "" (peers only)."""

    def __init__(self, case, name, backend):
        self.case, self.name = case, name
        self.dir = os.path.join(case.dir, name)
        self.state = os.path.join(self.dir, "state")
        self.sock = os.path.join(self.state, "control.sock")
        os.makedirs(self.dir)
        if backend:
            inference = ('plugin_settings = { backend-ollama = { url = "%s"; parallel = 4; }; };'
                         % backend)
        else:
            inference = 'inference = { backend = ""; };'
        self.conf = os.path.join(self.dir, "sovmeshd.conf")
        with open(self.conf, "w") as f:
            f.write("""
node = { name = "%s"; state_dir = "%s"; plugin_path = ["%s"]; };
mesh = { peer_listen = "127.0.0.1:0"; };
api = { listen = "127.0.0.1:0"; };
pairing = { listen = "127.0.0.1:0"; };
federated_learning = { enabled = false; };
%s
""" % (name, self.state, PLUGIN_DIR, inference))
        self.daemon = case.start(["-c", self.conf])
        self.daemon.wait_for_socket(self.sock)

    def cli_json(self, *args):
        r = run([SOVMESH, "--socket", self.sock, "--json"] + list(args), timeout=90)
        self.case.assertEqual(r.returncode, 0, "%s %s: %s\n%s" % (
            self.name, args, r.stderr, self.daemon.log()))
        return json.loads(r.stdout)

    def api_url(self):
        return "http://" + self.cli_json("status")["inference"]["api"]


class OllamaClientTest(DaemonTestCase):

    def setUp(self):
        super().setUp()
        why = node_ready()
        if why:
            self.fail(why)
        self.standin = StandIn(["--quiet", "--embed-dim", str(EMBED_DIM),
                                "--models", ",".join(MODELS)]).start()
        self.addCleanup(self.standin.stop)
        self.tag = "t" + uuid.uuid4().hex[:8]

    def client(self, node, *steps):
        """Run the ollama-js check against node's front door; return
        {step: line} after checking each step reported success."""
        args = ["node", CHECK, node.api_url(), "llama3.2", self.tag]
        if steps:
            args.append("--steps=" + ",".join(steps))
        r = subprocess.run(args, capture_output=True, text=True, timeout=600)
        logs = "\nstdout:\n%s\nstderr:\n%s\ndaemon logs:\n%s" % (
            r.stdout, r.stderr, "\n".join(d.log() for d in self.daemons))
        lines = {}
        for text in r.stdout.splitlines():
            line = json.loads(text)
            lines[line["step"]] = line
        self.assertEqual(list(lines), list(steps or ALL_STEPS), logs)
        for step, line in lines.items():
            self.assertTrue(line["ok"], "step %s failed%s" % (step, logs))
        self.assertEqual(r.returncode, 0, logs)
        return lines

    def check_answers(self, got, source, peer):
        chat = got["chat"]
        self.assertIn(self.tag, chat["sent"])
        self.assertEqual(chat["content"], "echo: " + chat["sent"])
        self.assertEqual(chat["role"], "assistant")
        self.assertEqual(chat["model"], "llama3.2")
        self.assertIs(chat["done"], True)
        self.assertEqual(chat["done_reason"], "stop")

        stream = got["chat_stream"]
        self.assertIn(self.tag, stream["sent"])
        self.assertEqual(stream["content"], "echo: " + stream["sent"])
        # The stand-in sends one word per chunk: the client saw a stream,
        # not one blob.
        self.assertGreaterEqual(stream["chunks"], len(stream["sent"].split()) + 1)
        self.assertIs(stream["done"], True)
        self.assertEqual(stream["done_reason"], "stop")

        gen = got["generate"]
        self.assertIn(self.tag, gen["sent"])
        self.assertEqual(gen["response"], "echo: " + gen["sent"])
        self.assertIs(gen["done"], True)

        self.assertEqual(sorted(got["list"]["models"]), sorted(MODELS))

        for step in ("chat", "chat_stream", "generate"):
            self.assertEqual(got[step]["http"]["status"], 200)
            self.assertEqual(got[step]["http"]["source"], source, step)
            self.assertEqual(got[step]["http"]["peer"], peer, step)

        missing = got["missing_model"]
        self.assertIn(self.tag, missing["model"])
        self.assertIn(missing["model"], missing["error"])
        return chat, stream, gen

    def chat_bodies(self):
        return [r["body"] for r in self.standin.requests("/api/chat")]

    def test_local_backend(self):
        alpha = Node(self, "alpha", self.standin.url)
        got = self.client(alpha)
        chat, stream, gen = self.check_answers(got, "local", None)
        self.assertEqual(got["missing_model"]["status_code"], 404)

        e = got["embed"]
        self.assertEqual(e["count"], 2)
        self.assertEqual(e["dims"], [EMBED_DIM, EMBED_DIM])
        for text, norm, sample in zip(e["sent"], e["norms"], e["sample"]):
            self.assertAlmostEqual(norm, 1.0, places=5)
            want = [[i, x] for i, x in enumerate(embed(text, EMBED_DIM)) if x != 0][:4]
            self.assertEqual([i for i, _ in sample], [i for i, _ in want], text)
            for (_, a), (_, b) in zip(sample, want):
                self.assertAlmostEqual(a, b, places=6)

        # What reached Ollama: each request once, the conversation whole
        # (the local backend is this user's own), the missing model never.
        bodies = self.chat_bodies()
        self.assertEqual(len(bodies), 2, bodies)
        self.assertEqual(bodies[0]["messages"], [{"role": "user", "content": chat["sent"]}])
        self.assertIs(bodies[0]["stream"], False)
        self.assertEqual([m["role"] for m in bodies[1]["messages"]],
                         ["system", "user", "assistant", "user"])
        self.assertEqual(bodies[1]["messages"][-1]["content"], stream["sent"])
        gens = [r["body"] for r in self.standin.requests("/api/generate")]
        self.assertEqual([g["prompt"] for g in gens], [gen["sent"]])
        embeds = [r["body"] for r in self.standin.requests("/api/embed")]
        self.assertEqual([b["input"] for b in embeds], [e["sent"]])

    def test_through_peer(self):
        alpha = Node(self, "alpha", self.standin.url)
        bravo = Node(self, "bravo", None)
        offer = alpha.cli_json("pair", "code", "--no-wait")
        r = run([SOVMESH, "--socket", bravo.sock, "pair", "join", offer["code"],
                 "--addr", offer["addresses"][0]], timeout=90)
        self.assertEqual(r.returncode, 0, r.stderr + alpha.daemon.log() + bravo.daemon.log())
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            peers = {p["name"]: p for p in bravo.cli_json("peers")["peers"]}
            if peers.get("alpha", {}).get("status") == "connected" and peers["alpha"]["models"]:
                break
            self.assertLess(time.monotonic(), deadline,
                            "alpha never connected with models: %s\n%s"
                            % (peers, bravo.daemon.log()))
            time.sleep(0.2)

        # No embed here: the front door answers embeddings from the local
        # backend only.
        got = self.client(bravo, "chat", "chat_stream", "generate", "list", "missing_model")
        chat, stream, gen = self.check_answers(got, "peer", "alpha")

        # Minimal disclosure (§6.5): alpha's Ollama got the query text
        # alone: no system prompt, no earlier turns.
        bodies = self.chat_bodies()
        self.assertEqual(len(bodies), 2, bodies)
        self.assertEqual(bodies[0]["messages"], [{"role": "user", "content": chat["sent"]}])
        self.assertEqual(bodies[1]["messages"], [{"role": "user", "content": stream["sent"]}])
        gens = [r["body"] for r in self.standin.requests("/api/generate")]
        self.assertEqual([g["prompt"] for g in gens], [gen["sent"]])


if __name__ == "__main__":
    unittest.main(verbosity=2)
