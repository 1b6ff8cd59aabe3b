"""The threshold tools: tools/cache_thresholds (built-in embedding) and
tools/cache_thresholds_ollama.py against the Ollama stand-in."""
import json
import math
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import BUILD_ROOT, SOURCE_ROOT, run  # noqa: E402

sys.path.insert(0, os.path.join(SOURCE_ROOT, "tests", "fixtures"))
from ollama_standin import StandIn, embed as standin_embed  # noqa: E402

TOOL = os.path.join(BUILD_ROOT, "tools", "cache_thresholds")
PY_TOOL = os.path.join(SOURCE_ROOT, "tools", "cache_thresholds_ollama.py")
PAIRS = os.path.join(SOURCE_ROOT, "tests", "data", "paraphrase_pairs.tsv")


def read_pairs(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return [(int(l.split("\t")[0]), *l.split("\t")[1:]) for l in lines[1:] if l]


class Checks:
    """Shared: a sweep and its picks follow the documented rules."""

    def check_report(self, rep, pairs, min_precision=0.95):
        npos = sum(p[0] for p in pairs)
        self.assertEqual(rep["pairs"], len(pairs))
        self.assertEqual(rep["positives"], npos)
        self.assertEqual(rep["negatives"], len(pairs) - npos)
        sweep = rep["sweep"]
        self.assertEqual(len(sweep), 101)
        for t, r in enumerate(sweep):
            self.assertAlmostEqual(r["threshold"], t / 100)
            self.assertEqual(r["tp"] + r["fn"], npos)
            self.assertEqual(r["fp"] + r["tn"], len(pairs) - npos)
            if r["tp"] + r["fp"]:
                self.assertAlmostEqual(r["precision"], r["tp"] / (r["tp"] + r["fp"]), places=3)
            else:
                self.assertIsNone(r["precision"])
            self.assertAlmostEqual(r["recall"], r["tp"] / npos, places=3)
        # A higher threshold never says "same" to more pairs.
        for a, b in zip(sweep, sweep[1:]):
            self.assertLessEqual(b["tp"] + b["fp"], a["tp"] + a["fp"])

        ok = [t for t, r in enumerate(sweep)
              if r["precision"] is not None and r["precision"] >= min_precision]
        if not ok:
            self.assertIsNone(rep["hit"])
            return
        hit = ok[0]
        self.assertAlmostEqual(rep["hit"]["threshold"], hit / 100)
        self.assertAlmostEqual(rep["hit"]["precision"], sweep[hit]["precision"], places=3)
        self.assertAlmostEqual(rep["hit"]["recall"], sweep[hit]["recall"], places=3)
        if hit == 0:
            self.assertIsNone(rep["near_miss"])
            return
        best = max(sweep[t]["f1"] for t in range(hit))
        near = max(t for t in range(hit) if sweep[t]["f1"] >= best - 0.01 - 1e-9)
        self.assertAlmostEqual(rep["near_miss"]["threshold"], near / 100)
        self.assertLess(rep["near_miss"]["threshold"], rep["hit"]["threshold"])


class BuiltinToolTest(unittest.TestCase, Checks):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="sovmesh-thr-")

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, name, text):
        p = os.path.join(self.tmp.name, name)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        return p

    def test_json_on_the_data_set(self):
        r = run([TOOL, "--json"])  # the default file is the project's data set
        self.assertEqual(r.returncode, 0, r.stderr)
        rep = json.loads(r.stdout)
        self.assertEqual(rep["embedding"], "builtin")
        self.assertEqual(rep["dim"], 512)
        self.check_report(rep, read_pairs(PAIRS))
        self.assertIsNotNone(rep["hit"])
        self.assertIsNotNone(rep["near_miss"])
        bg = rep["background"]
        self.assertLessEqual(bg["p50"], bg["p75"])
        self.assertLessEqual(bg["p75"], bg["p90"])

    def test_human_output(self):
        r = run([TOOL, "--scores", PAIRS])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("threshold    tp    fp    fn    tn  precision  recall     F1", r.stdout)
        self.assertRegex(r.stdout, r"hit threshold: +0\.\d\d  precision")
        self.assertRegex(r.stdout, r"near-miss threshold: +0\.\d\d  precision")
        # Identical questions up to case and punctuation score 1.
        self.assertRegex(r.stdout, r"1\.0000      1  What is the capital of Spain\? \| "
                         r"what is the capital of spain")

    def test_min_precision_changes_the_pick(self):
        a = json.loads(run([TOOL, "--json"]).stdout)
        b = run([TOOL, "--json", "--min-precision", "0.8"])
        self.assertEqual(b.returncode, 0, b.stderr)
        b = json.loads(b.stdout)
        self.check_report(b, read_pairs(PAIRS), 0.8)
        self.assertLessEqual(b["hit"]["threshold"], a["hit"]["threshold"])

    def test_unreachable_precision(self):
        # Only different questions that look alike: nothing is precise.
        p = self.write("p.tsv", "label\tq1\tq2\n1\tcapital of france\tfrench capital\n"
                       "0\tcapital of france\tcapital of germany\n"
                       "0\tconvert 5 km to miles\tconvert 5 miles to km\n")
        r = run([TOOL, "--json", p])
        self.assertEqual(r.returncode, 1)
        self.assertIn("no threshold reaches precision 0.95", r.stderr)
        self.assertIsNone(json.loads(r.stdout)["hit"])

    def test_bad_files(self):
        cases = [
            ("", ":1: empty file"),
            ("q1\tq2\tlabel\n1\ta\tb\n", ":1: the header must be"),
            ("label\tq1\tq2\n1\ta\tb\n0\tonly two\n", ":3: expected 3 tab-separated fields"),
            ("label\tq1\tq2\n1\ta\tb\tc\n", ":2: expected 3 tab-separated fields"),
            ("label\tq1\tq2\nyes\ta\tb\n", ":2: the label must be 0 or 1"),
            ("label\tq1\tq2\n1\t\tb\n", ":2: empty question"),
            ("label\tq1\tq2\n1\ta\tb\n1\tc\td\n", "needs pairs labelled 1 and pairs labelled 0"),
        ]
        for i, (text, want) in enumerate(cases):
            p = self.write("bad%d.tsv" % i, text)
            r = run([TOOL, p])
            self.assertEqual(r.returncode, 2, (text, r.stdout))
            self.assertIn(want, r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        r = run([TOOL, os.path.join(self.tmp.name, "missing.tsv")])
        self.assertEqual(r.returncode, 2)
        self.assertIn("missing.tsv: cannot open", r.stderr)
        r = run([TOOL, "--min-precision", "1.5"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("--min-precision must be a number in (0, 1]", r.stderr)
        # CRLF line ends and blank lines are fine.
        p = self.write("crlf.tsv", "label\tq1\tq2\r\n1\ta b\ta b\r\n\r\n0\ta b\tc d\r\n")
        r = run([TOOL, "--json", p])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["pairs"], 2)


class OllamaToolTest(unittest.TestCase, Checks):

    @classmethod
    def setUpClass(cls):
        cls.standin = StandIn(["--quiet", "--models", "nomic-embed-text"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.standin.stop()

    def setUp(self):
        self.standin.reset()

    def tool(self, *args):
        return run([sys.executable, PY_TOOL, "--url", self.standin.url] + list(args),
                   timeout=300)

    def expected_sims(self, pairs, dim=768):
        def unit(t):
            v = standin_embed(t, dim)
            n = math.sqrt(sum(x * x for x in v))
            return [x / n for x in v]
        cache = {}
        out = []
        for _, a, b in pairs:
            va = cache.setdefault(a, unit(a))
            vb = cache.setdefault(b, unit(b))
            out.append(sum(x * y for x, y in zip(va, vb)))
        return out

    def test_sweep_matches_the_models_vectors(self):
        pairs = read_pairs(PAIRS)
        # The stand-in's trigram vectors are crude: ask for less precision
        # so that both picks exist.
        r = self.tool("--model", "nomic-embed-text", "--json", "--min-precision", "0.6",
                      "--batch", "50")
        self.assertEqual(r.returncode, 0, r.stderr)
        rep = json.loads(r.stdout)
        self.assertEqual(rep["embedding"], "ollama")
        self.assertEqual(rep["model"], "nomic-embed-text")
        self.assertEqual(rep["dim"], 768)
        self.check_report(rep, pairs, 0.6)
        self.assertIsNotNone(rep["hit"])
        self.assertIsNotNone(rep["near_miss"])
        # Same counts as computing the stand-in's vectors here (up to
        # similarities within rounding of a threshold).
        sims = self.expected_sims(pairs)
        for t in (30, 50, 70, 90):
            tp = sum(1 for (l, _, _), s in zip(pairs, sims) if l and s >= t / 100)
            near_edge = sum(1 for s in sims if abs(s - t / 100) < 1e-6)
            self.assertLessEqual(abs(rep["sweep"][t]["tp"] - tp), near_edge)
        # Every distinct question embedded once, in batches of 50.
        reqs = self.standin.requests("/api/embed")
        sent = [q for q in (x["body"]["input"] for x in reqs) for q in q]
        distinct = {q for _, a, b in pairs for q in (a, b)}
        self.assertEqual(len(sent), len(distinct))
        self.assertEqual(set(sent), distinct)
        self.assertTrue(all(len(x["body"]["input"]) <= 50 for x in reqs))
        self.assertTrue(all(x["body"]["model"] == "nomic-embed-text" for x in reqs))

    def test_default_precision_unreachable_with_crude_vectors(self):
        r = self.tool("--model", "nomic-embed-text")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no threshold reaches precision 0.95", r.stderr)
        self.assertIn("hit threshold:        none", r.stdout)

    def test_prefix_is_sent(self):
        r = self.tool("--model", "nomic-embed-text", "--json", "--min-precision", "0.6",
                      "--prefix", "clustering: ")
        self.assertEqual(r.returncode, 0, r.stderr)
        sent = [q for x in self.standin.requests("/api/embed") for q in x["body"]["input"]]
        self.assertTrue(sent and all(q.startswith("clustering: ") for q in sent))

    def test_errors(self):
        r = self.tool("--model", "no-such-model")
        self.assertEqual(r.returncode, 1)
        self.assertIn('HTTP 404: model "no-such-model" not found', r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)

        self.standin.config(busy=True)
        r = self.tool("--model", "nomic-embed-text")
        self.assertEqual(r.returncode, 1)
        self.assertIn("HTTP 503: server busy", r.stderr)
        self.standin.config(busy=False)

        r = run([sys.executable, PY_TOOL, "--url", "http://127.0.0.1:1", "--model", "x"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot reach Ollama at http://127.0.0.1:1", r.stderr)

        self.standin.clear()
        with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
            f.write("label\tq1\tq2\n2\ta\tb\n")
        try:
            r = self.tool("--model", "nomic-embed-text", "--pairs", f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(r.returncode, 2)
        self.assertIn(":2: the label must be 0 or 1", r.stderr)
        # Nothing was asked of the model for a bad file.
        self.assertEqual(self.standin.requests("/api/embed"), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
