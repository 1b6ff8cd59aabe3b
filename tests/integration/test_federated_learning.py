"""Federated learning end to end (issue 7) on the multi-host harness.

Three hosts, each with an Ollama stand-in on 127.0.0.1:11434 and a real
sovmeshd, all three paired with each other. The tests run in order and
build on each other:

  1  every host gets 5 feedback samples: each trains (trainer-reference),
     noises (dp-laplace), charges ε, seals and sends to both peers,
     aggregates (agg-fedavg) and applies the new adapter to its stand-in
     (/api/create); the budget falls by exactly noise_epsilon; what left
     each host (the plaintext just before sealing) holds tensors and a
     sample count, never the samples' text.
  2  a paired peer sending a malformed, oversized, mismatched, NaN or
     over-described delta is refused with a clear log line; nothing changes.
  3  a peer with federated learning off receives nothing.
  4  when the budget is spent, syncing stops (and the log says so); a
     restart or raising the config does not refill it; only an explicit
     new period does.
  5  kill -9 at every step of a round: the ledger never shows less ε than
     has left the device, and a restart never lowers it.

Needs root (skipped otherwise); CI runs as root."""
import glob
import json
import os
import signal
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns_harness import Mesh, skip_unless_available, wait_for  # noqa: E402
from test_mesh_inference import API_PORT, MODEL, OLLAMA_PORT, call, pair_hosts  # noqa: E402

EPSILON = 1.0
SAMPLES = 5
SETTLE = 60
MAX_DELTA = 1 << 20
ADAPTED = "llama3.2-sovmesh:latest"
BUILD = os.environ.get("SOVMESH_BUILD_ROOT", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "build"))
FL_INJECT = os.path.join(BUILD, "tests", "integration", "fl_inject")
CRASH_POINTS = ("after_train", "after_charge", "after_encode", "after_send", "after_round",
                "after_aggregate", "after_commit")


def read_safetensors_header(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


@skip_unless_available()
class FederatedLearningTest(unittest.TestCase):
    N = 3
    PAIRS = ((1, 2), (1, 3), (2, 3))

    @classmethod
    def setUpClass(cls):
        cls.mesh = Mesh(cls.N)
        try:
            cls.names = {i: cls.mesh.hosts[i].name for i in cls.mesh.hosts}
            cls.plain = {}
            cls.samples_sent = {i: [] for i in cls.mesh.hosts}
            for i in cls.mesh.hosts:
                cls.plain[i] = os.path.join(cls.mesh.hosts[i].dir, "plaintext")
                os.makedirs(cls.plain[i])
                cls.mesh.start_standin(i, ["--parallel", "1"])
                cls.start(i)
            for a, b in cls.PAIRS:
                pair_hosts(cls.mesh, a, b)
            cls.fps = {i: cls.mesh.cli_json(i, "id")["fingerprint"] for i in cls.mesh.hosts}
            for a, b in cls.PAIRS:
                cls.wait_fl_peer(a, b, True)
                cls.wait_fl_peer(b, a, True)
        except BaseException:
            cls.mesh.teardown()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.mesh.teardown()

    # ---- helpers ----

    @classmethod
    def start(cls, i, fl_on=True, budget=100.0, wait_secs=30, crash_at=None, fl_extra=""):
        m = cls.mesh
        if m.sovmeshd_running(i):
            m.stop_host(i)
        fl = None
        if fl_on:
            fl = ('enabled = true; sync_after_n_samples = %d; noise_epsilon = %g; '
                  'privacy_budget = %g; aggregation_wait_secs = %d; max_delta_bytes = %d; '
                  'base_model = "%s"; %s' % (SAMPLES, EPSILON, budget, wait_secs, MAX_DELTA,
                                              MODEL, fl_extra))
        env = {"SOVMESH_TEST_FL_PLAINTEXT_DIR": cls.plain[i]}
        if crash_at:
            env["SOVMESH_TEST_FL_CRASH_AT"] = crash_at
        m.start_host(
            i, fl=fl, env_extra=env, mesh_extra="health_interval_ms = 500;",
            config_extra=('plugin_settings = { backend-ollama = { '
                          'url = "http://127.0.0.1:%d"; }; };\n'
                          'cache = { enabled = false; };' % OLLAMA_PORT))

    @classmethod
    def peer_view(cls, i, j):
        for p in cls.mesh.cli_json(i, "peers")["peers"]:
            if p["name"] == cls.names[j]:
                return p
        return None

    @classmethod
    def wait_fl_peer(cls, i, j, fl):
        cls.mesh.wait_for(lambda: (lambda p: p is not None and p.get("status") == "connected"
                                   and p.get("federated_learning") is fl)(cls.peer_view(i, j)),
                          timeout=SETTLE, what="%s to see %s connected with federated "
                          "learning %s" % (cls.names[i], cls.names[j], "on" if fl else "off"))

    def fl(self, i):
        return self.mesh.cli_json(i, "status")["federated_learning"]

    def budget(self, i):
        r = call(self.mesh, i, "GET", "/sovmesh/v1/budget")
        self.assertEqual(r.status, 200, r)
        return r.json()

    def feedback(self, i, n=SAMPLES, tag="t"):
        for k in range(n):
            prompt = "PROMPT-%s-%s-%d how do I fix my bike chain" % (tag, self.names[i], k)
            response = "RESPONSE-%s-%s-%d oil it and adjust the tension" % (
                tag, self.names[i], k)
            r = call(self.mesh, i, "POST", "/api/feedback",
                     {"prompt": prompt, "response": response,
                      "rating": "up" if k % 2 == 0 else "down", "model": MODEL})
            self.assertEqual(r.status, 200, r)
            self.samples_sent[i] += [prompt, response]

    def wait_fl(self, i, pred, what, timeout=SETTLE):
        seen = [None]

        def check():
            seen[0] = self.fl(i)
            return pred(seen[0])
        return wait_for(check, timeout, "%s: %s" % (self.names[i], what),
                        describe=lambda: "last: %s\n%s" % (json.dumps(seen[0]),
                                                           self.mesh.logs()))

    def idle(self, i):
        self.wait_fl(i, lambda s: not s["round_running"] and s["samples_pending"] < SAMPLES
                     and s["applied"]["state"] != "pending", "idle")

    def standin_requests(self, i):
        r = call(self.mesh, i, "GET", "/__standin/requests", port=OLLAMA_PORT)
        return r.json()["requests"]

    def received_from(self, i, sender):
        """Rounds of `sender` whose delta host i stored (from i's log)."""
        needle = "fl: stored a delta from '%s'" % self.names[sender]
        rounds = set()
        for line in self.mesh.log(i).splitlines():
            if needle in line and "(its round " in line:
                rounds.add(int(line.split("(its round ")[1].split(",")[0]))
        return rounds

    def log_since(self, i, mark):
        return self.mesh.log(i)[mark:]

    # ---- 1 ----

    def test_1_everyone_trains_syncs_aggregates_applies(self):
        m = self.mesh
        before = {i: self.fl(i) for i in m.hosts}
        for i in m.hosts:
            self.assertEqual(before[i]["epsilon_spent"], 0.0)
            self.assertEqual(before[i]["adapter"]["current"], "initial")
        for i in m.hosts:
            self.feedback(i)
        for i in m.hosts:
            self.wait_fl(i, lambda s: s["rounds_done"] >= 1 and s["deltas"]["received"] >= 2
                         and s["deltas"]["aggregations"] >= 1
                         and s["applied"]["state"] == "applied",
                         "round done, both peers' deltas in, aggregated and applied")
        for i in m.hosts:
            s = self.fl(i)
            others = [j for j in m.hosts if j != i]
            self.assertEqual(s["epsilon_spent"], EPSILON, "exactly one sync's ε: %s" % s)
            self.assertIn("synced with 2 of 2 peers", s["last_round"]["outcome"], s)
            self.assertEqual(s["deltas"]["sent"], 2, s)
            self.assertNotEqual(s["adapter"]["current"], "initial", s)
            self.assertEqual(s["applied"]["model"], ADAPTED, s)
            self.assertEqual(s["applied"]["base_model"], MODEL, s)
            b = self.budget(i)
            self.assertEqual(len(b["history"]), 1, b)
            self.assertEqual(b["history"][0]["epsilon"], EPSILON, b)
            # What the RDP accountant composes: Laplace, b/Δ = 1/ε (plus the grid's bit).
            self.assertEqual(b["history"][0]["family"], "laplace", b)
            self.assertGreaterEqual(b["history"][0]["noise_multiplier"], 1 / EPSILON, b)
            self.assertLess(b["history"][0]["noise_multiplier"], 1.01 / EPSILON, b)
            self.assertEqual(b["accountant"], "basic", b)
            self.assertEqual(sorted(b["history"][0]["peers"]),
                             sorted(self.fps[j] for j in others), b)
            self.assertEqual(b["remaining"], 100.0 - EPSILON, b)
            # The adapted model exists on the stand-in, made from the base.
            creates = [r for r in self.standin_requests(i) if r["path"] == "/api/create"]
            self.assertTrue(creates, "no /api/create on %s" % self.names[i])
            self.assertEqual(creates[-1]["body"]["model"], ADAPTED)
            self.assertEqual(creates[-1]["body"]["from"], MODEL)
            self.assertTrue(creates[-1]["body"]["adapters"], creates[-1])
            tags = call(m, i, "GET", "/api/tags", port=OLLAMA_PORT).json()
            self.assertIn(ADAPTED, [t["name"] for t in tags["models"]])
            # The peer list shows when each peer last synced.
            for j in others:
                self.assertIsNotNone(self.peer_view(i, j)["last_sync"],
                                     "%s sees no last sync with %s" % (self.names[i],
                                                                      self.names[j]))
        # What left each device: tensors and a sample count, nothing else.
        every_text = [t.encode() for i in m.hosts for t in self.samples_sent[i]]
        for i in m.hosts:
            dumps = sorted(glob.glob(os.path.join(self.plain[i], "*.bin")))
            self.assertEqual(len(dumps), 2, "one plaintext per peer: %s" % dumps)
            for path in dumps:
                with open(path, "rb") as f:
                    raw = f.read()
                hdr = read_safetensors_header(raw)
                meta = hdr.pop("__metadata__")
                self.assertEqual(set(meta), {"sovmesh_fl", "samples", "round"}, meta)
                self.assertEqual(meta["samples"], str(SAMPLES))
                for name, t in hdr.items():
                    self.assertTrue(name.startswith("base_model.model.head."), name)
                    self.assertEqual(t["dtype"], "F32")
                for text in every_text:
                    self.assertNotIn(text, raw, "sample text left %s" % self.names[i])
                self.assertNotIn(b"PROMPT-", raw)
                self.assertNotIn(b"RESPONSE-", raw)
                self.assertNotIn(MODEL.encode(), raw)

    # ---- 2 ----

    def test_2_bad_deltas_are_refused_and_change_nothing(self):
        m = self.mesh
        A, B = 1, 2
        self.idle(A)
        before = self.fl(A)
        layout = os.path.join(m.hosts[A].state_dir, "fl", "adapters",
                              before["adapter"]["current"])
        cases = [
            ("garbage", 400, "not safetensors"),
            ("oversized", 413, "limit"),
            ("mismatched", 400, "has shape"),
            ("nan", 400, "is NaN"),
            ("metadata", 400, "unexpected key"),
        ]
        for kind, status, reason in cases:
            mark = len(m.log(A))
            size = str(MAX_DELTA + MAX_DELTA // 2) if kind == "oversized" else "4096"
            r = m.run(B, [FL_INJECT, "--state-dir", m.hosts[B].state_dir, "--to", self.fps[A],
                          "--addr", m.hosts[A].peer_addr(), "--layout", layout, "--kind", kind,
                          "--size", size])
            self.assertEqual(r.returncode, 0, "fl_inject %s: %s %s" % (kind, r.stdout,
                                                                         r.stderr))
            got = r.stdout.strip()
            self.assertTrue(got.startswith("status %d " % status), "%s: %s" % (kind, got))
            self.assertIn(reason, got, kind)
            wait_for(lambda: "refused" in self.log_since(A, mark), 10,
                     "a log line about the refused %s delta" % kind)
            line = [x for x in self.log_since(A, mark).splitlines() if "refused" in x]
            self.assertTrue(any(reason in x for x in line), "%s: %s" % (kind, line))
        after = self.fl(A)
        self.assertEqual(after["adapter"], before["adapter"])
        self.assertEqual(after["inbox_pending"], 0, after)
        self.assertEqual(after["deltas"]["aggregations"], before["deltas"]["aggregations"])
        self.assertEqual(after["deltas"]["received"], before["deltas"]["received"])
        self.assertEqual(after["deltas"]["refused"] - before["deltas"]["refused"],
                         len(cases) - 1,  # the oversized one never reached the parser
                         after)
        self.assertTrue(m.sovmeshd_running(A))

    # ---- 3 ----

    def test_3_peer_with_fl_off_receives_nothing(self):
        m = self.mesh
        A, B, C = 1, 2, 3
        self.idle(A)
        self.start(C, fl_on=False)
        self.wait_fl_peer(A, C, False)
        self.wait_fl_peer(A, B, True)
        mark_c = len(m.log(C))
        before = self.fl(A)
        received_b = self.fl(B)["deltas"]["received"]
        self.feedback(A, tag="off")
        self.wait_fl(A, lambda s: s["rounds_done"] > before["rounds_done"], "one more round")
        s = self.fl(A)
        self.assertIn("synced with 1 of 1 peer", s["last_round"]["outcome"], s)
        self.assertEqual(s["epsilon_spent"], before["epsilon_spent"] + EPSILON)
        newest = self.budget(A)["history"][0]
        self.assertEqual(newest["peers"], [self.fps[B]], newest)
        self.wait_fl(B, lambda x: x["deltas"]["received"] == received_b + 1, "B got it")
        self.assertNotIn("fl/delta", self.log_since(C, mark_c))
        self.assertNotIn("stored a delta", self.log_since(C, mark_c))
        self.assertEqual(self.fl(C), {"enabled": False})
        self.start(C)
        self.wait_fl_peer(A, C, True)
        self.wait_fl_peer(B, C, True)

    # ---- 4 ----

    def test_4_spent_budget_stops_syncing(self):
        m = self.mesh
        A, B = 1, 2
        self.idle(A)
        spent = self.fl(A)["epsilon_spent"]
        # Lowering the total takes effect at once: room for one more sync.
        self.start(A, budget=spent + EPSILON + 0.5)
        self.wait_fl_peer(A, B, True)
        self.feedback(A, tag="b1")
        self.wait_fl(A, lambda s: s["epsilon_spent"] == spent + EPSILON and
                     not s["round_running"], "the last affordable sync")
        received_b = self.fl(B)["deltas"]["received"]
        mark = len(m.log(A))
        rounds = self.fl(A)["rounds_done"]
        self.feedback(A, tag="b2")
        self.wait_fl(A, lambda s: s["rounds_done"] > rounds and not s["round_running"],
                     "a round without sync")
        s = self.fl(A)
        self.assertIn("privacy budget", s["last_round"]["outcome"], s)
        self.assertEqual(s["epsilon_spent"], spent + EPSILON, s)
        self.assertIn("sync skipped", self.log_since(A, mark))
        time.sleep(2)
        self.assertEqual(self.fl(B)["deltas"]["received"], received_b, "B got a delta")
        # Neither a restart nor raising the config refills it.
        self.start(A, budget=100.0)
        self.wait_fl_peer(A, B, True)
        b = self.budget(A)
        self.assertEqual(b["spent"], spent + EPSILON, b)
        self.assertEqual(b["total"], spent + EPSILON + 0.5, b)
        rounds = self.fl(A)["rounds_done"]
        self.feedback(A, tag="b3")
        self.wait_fl(A, lambda s: s["rounds_done"] > rounds and not s["round_running"],
                     "a round after the restart")
        self.assertIn("privacy budget", self.fl(A)["last_round"]["outcome"])
        # Only an explicit new period does, and it says what it means.
        r = m.cli(A, "budget", "new-period", "--total", "100")
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("WARNING", r.stdout + r.stderr)
        self.assertEqual(self.budget(A)["period"], 1)
        r = m.cli(A, "budget", "new-period", "--total", "100", "--yes")
        self.assertEqual(r.returncode, 0, r)
        b = self.budget(A)
        self.assertEqual((b["period"], b["spent"], b["total"]), (2, 0.0, 100.0), b)
        self.assertEqual(len(b["periods"]), 2, b)

    # ---- 5 ----

    def test_5_kill_9_at_every_step_never_undercounts(self):
        m = self.mesh
        A, B, C = 1, 2, 3
        for point in CRASH_POINTS:
            self.idle(A)
            self.start(A, crash_at=point, wait_secs=2)
            self.wait_fl_peer(A, B, True)
            self.wait_fl_peer(A, C, True)
            spent_before = self.fl(A)["epsilon_spent"]
            try:
                self.feedback(A, tag="crash-" + point)
            except (AssertionError, OSError, ConnectionError):
                pass  # the daemon may die while we are still sending feedback
            h = m.hosts[A]
            wait_for(lambda: not h.sovmeshd.alive(), SETTLE,
                     "sovmeshd of A to be killed at %s" % point, describe=m.logs)
            self.assertEqual(h.sovmeshd.proc.returncode, -signal.SIGKILL, point)
            self.assertIn("SOVMESH_TEST_FL_CRASH_AT=%s: killing" % point, m.log(A))
            self.start(A)
            self.wait_fl_peer(A, B, True)
            spent = self.fl(A)["epsilon_spent"]
            self.assertGreaterEqual(spent, spent_before, "%s: a restart refilled the budget"
                                    % point)
            # Every round of A that reached a peer was charged.
            time.sleep(1)
            left = self.received_from(B, A) | self.received_from(C, A)
            charged = {c["round"] for c in self.budget(A)["history"]}
            self.assertLessEqual(left, charged, "%s: rounds that left A without a charge"
                                 % point)
            b = self.budget(A)
            self.assertGreaterEqual(b["spent"] + 1e-9,
                                    EPSILON * len({r for r in left if r in charged and any(
                                        c["round"] == r and c["period"] == b["period"]
                                        for c in b["history"])}), point)
            # After the restart the interrupted round's samples are trained
            # again: let that finish before the next crash.
            self.idle(A)

    # ---- 6 ----

    def test_6_rdp_accountant_reads_the_same_ledger(self):
        A, B = 1, 2
        self.idle(A)
        basic = self.budget(A)
        self.start(A, fl_extra='accountant = "rdp"; target_delta = 1e-6;')
        self.wait_fl_peer(A, B, True)
        b = self.budget(A)
        self.assertEqual(b["accountant"], "rdp", b)
        self.assertEqual(b["target_delta"], 1e-6, b)
        self.assertEqual(b["charges"], basic["charges"])
        # Composition never costs more than adding up.
        self.assertLessEqual(b["spent"], basic["spent"] + 1e-9, (b, basic))
        spent = b["spent"]
        self.feedback(A, tag="rdp")
        self.wait_fl(A, lambda s: s["budget"]["charges"] == basic["charges"] + 1 and
                     not s["round_running"], "one more charged sync under rdp")
        self.assertGreater(self.budget(A)["spent"], spent)

    # ---- 7 ----

    def test_7_no_noise_is_opt_in_and_takes_the_whole_budget(self):
        m = self.mesh
        A, B = 1, 2
        self.idle(A)
        # Refused without the opt-in: the daemon does not start.
        r = m.run(A, [os.path.join(BUILD, "core", "sovmeshd"), "--check-config", "-c",
                      m.write_config(A, fl='enabled = true; noise_mechanism = "none";')])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("allow_no_noise", r.stderr)
        self.start(A, fl_extra='noise_mechanism = "none"; allow_no_noise = true;')
        self.wait_fl_peer(A, B, True)
        before = self.budget(A)
        self.assertGreater(before["remaining"], 0)
        mark = len(m.log(A))
        self.feedback(A, tag="none")
        self.wait_fl(A, lambda s: s["budget"]["charges"] == before["charges"] + 1 and
                     not s["round_running"], "a sync without noise")
        b = self.budget(A)
        self.assertEqual(b["history"][0]["mechanism"], "none", b)
        self.assertAlmostEqual(b["history"][0]["epsilon"], before["remaining"], places=9)
        self.assertEqual(b["remaining"], 0, b)
        self.assertIn("WITHOUT noise", self.log_since(A, mark))
        # Nothing is left for the period: the next round does not sync.
        self.feedback(A, tag="none2")
        self.wait_fl(A, lambda s: "privacy budget" in (s["last_round"] or {}).get("outcome", "")
                     and not s["round_running"], "the next round without a sync")
        self.start(A)


if __name__ == "__main__":
    unittest.main(verbosity=2)
