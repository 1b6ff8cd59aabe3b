#!/usr/bin/env python3
"""sovmesh-sim, the federated-learning simulator (docs/simulator.md): the
built binary with the real plugins on the UCI digits (tests/data), plus a
third party's aggregator built from sdk/examples/agg-median and loaded
with --plugin-dir.

Environment (set by tests/integration/meson.build):
  SOVMESH_BUILD_ROOT   the meson build directory (already built)
  SOVMESH_SOURCE_ROOT  the source tree
"""
import csv
import glob
import gzip
import io
import os
import random
import shutil
import subprocess
import tempfile
import unittest
import xml.etree.ElementTree as ET

BUILD = os.environ.get("SOVMESH_BUILD_ROOT", "")
SOURCE = os.environ.get("SOVMESH_SOURCE_ROOT", "")
TIMEOUT = 120  # generous: a slow, busy 2-core machine (and sanitizers)
SVG_NS = "{http://www.w3.org/2000/svg}"


def sim_path():
    return os.path.join(BUILD, "sim", "sovmesh-sim")


def run_sim(args, env=None):
    e = dict(os.environ)
    e.pop("SOVMESH_PLUGIN_PATH", None)  # only what a case asks for
    if env:
        e.update(env)
    return subprocess.run([sim_path()] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=TIMEOUT, env=e)


def read_csv(path):
    """{run: [(round, accuracy, loss, epsilon_spent), ...]} in file order."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["run", "round", "accuracy", "loss", "epsilon_spent"], rows[0]
    runs = {}
    for r in rows[1:]:
        runs.setdefault(r[0], []).append((int(r[1]), float(r[2]), float(r[3]), float(r[4])))
    return runs


class Sim(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not BUILD or not SOURCE:
            raise RuntimeError("set SOVMESH_BUILD_ROOT and SOVMESH_SOURCE_ROOT (meson test does)")
        cls._tmp = tempfile.TemporaryDirectory(prefix="sovmesh-sim-")
        cls.tmp = cls._tmp.name
        # A third party's aggregator: the SDK example, compiled against
        # the SDK headers only, in a directory of its own.
        cls.thirdparty = os.path.join(cls.tmp, "thirdparty")
        os.makedirs(cls.thirdparty)
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        src = os.path.join(SOURCE, "sdk", "examples", "agg-median", "median.c")
        r = subprocess.run([cc, "-std=c11", "-O2", "-fPIC", "-shared", "-fvisibility=hidden",
                            "-I", os.path.join(SOURCE, "sdk", "include"), "-o",
                            os.path.join(cls.thirdparty, "agg-median.so"), src],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=TIMEOUT)
        if r.returncode != 0:
            cls._tmp.cleanup()
            raise RuntimeError("building agg-median failed:\n" + r.stderr)
        # The loader tests' good aggregator (a weighted mean), copied as a
        # second third-party file.
        good = os.path.join(BUILD, "tests", "plugins", "agg-good.so")
        if os.path.exists(good):
            shutil.copy(good, cls.thirdparty)
        cls.honest = None

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp, name)

    def ok(self, args, env=None):
        r = run_sim(args, env)
        self.assertEqual(r.returncode, 0, "sovmesh-sim %s:\n%s" % (" ".join(args), r.stderr))
        return r

    def final(self, runs, name):
        return runs[name][-1]

    def honest_run(self):
        """The reference run (fedavg, IID, 10 clients x 20 rounds), once."""
        if Sim.honest is None:
            out = self.path("honest.csv")
            r = self.ok(["--csv", out])
            Sim.honest = (read_csv(out), r)
        return Sim.honest

    # ---- basics ----

    def test_help_lists_every_option(self):
        r = self.ok(["--help"])
        for opt in ["--data", "--label-column", "--scale", "--test-fraction", "--clients",
                    "--rounds", "--local-epochs", "--seed", "--split", "--trainer",
                    "--trainer-param", "--aggregator", "--agg-param", "--noise", "--epsilon",
                    "--clip", "--delta", "--noise-param", "--byzantine", "--byz-scale",
                    "--compare", "--compare-noise", "--csv", "--svg", "--plugin-dir",
                    "--config", "dirichlet:ALPHA", "gaussian", "signflip", "labelflip",
                    "NOT private"]:
            self.assertIn(opt, r.stdout, opt)

    def test_default_run_reaches_reference_accuracy(self):
        runs, r = self.honest_run()
        self.assertEqual(list(runs), ["fedavg"])
        rows = runs["fedavg"]
        self.assertEqual([x[0] for x in rows], list(range(21)))  # round 0 = initial adapter
        self.assertLess(rows[0][1], 0.2)  # untrained: about chance
        self.assertGreaterEqual(rows[-1][1], 0.90)
        self.assertLess(rows[-1][2], rows[0][2])  # the loss fell
        # No noise step: a released delta is not private at all.
        self.assertEqual(rows[0][3], 0)
        self.assertEqual(rows[-1][3], float("inf"))
        # The summary table on stdout.
        lines = r.stdout.strip().splitlines()
        self.assertIn("final accuracy", lines[0])
        self.assertTrue(lines[1].startswith("fedavg"), lines)
        self.assertIn("%.4f" % rows[-1][1], lines[1])

    def test_same_seed_same_csv_byte_for_byte(self):
        args = ["--rounds", "6", "--split", "dirichlet:0.5", "--noise", "laplace",
                "--epsilon", "50", "--byzantine", "1:gaussian", "--seed", "7"]
        outs = []
        for i in range(2):
            out = self.path("det%d.csv" % i)
            self.ok(args + ["--csv", out])
            with open(out, "rb") as f:
                outs.append(f.read())
        self.assertEqual(outs[0], outs[1])
        out = self.path("det-other-seed.csv")
        self.ok(args[:-1] + ["8", "--csv", out])
        with open(out, "rb") as f:
            self.assertNotEqual(f.read(), outs[0])

    # ---- plot and comparisons ----

    def test_svg_is_xml_with_one_line_per_run_and_a_legend(self):
        svg = self.path("cmp.svg")
        out = self.path("cmp.csv")
        self.ok(["--rounds", "5", "--plugin-dir", self.thirdparty,
                 "--compare", "fedavg,median", "--svg", svg, "--csv", out])
        root = ET.parse(svg).getroot()
        self.assertEqual(root.tag, SVG_NS + "svg")
        lines = root.findall(".//" + SVG_NS + "polyline")
        self.assertEqual([p.get("data-run") for p in lines], ["fedavg", "median"])
        for p in lines:
            self.assertEqual(len(p.get("points").split()), 6)  # rounds 0..5
        legend = root.find(".//" + SVG_NS + "g[@id='legend']")
        self.assertIsNotNone(legend)
        texts = [t.text for t in legend.iter(SVG_NS + "text")]
        self.assertEqual(texts, ["fedavg", "median"])
        title = root.find(".//" + SVG_NS + "text[@id='title']")
        self.assertIn("accuracy", title.text)
        axes = root.find(".//" + SVG_NS + "g[@id='axes']")
        ticks = [t.text for t in axes.iter(SVG_NS + "text")]
        self.assertIn("0.5", ticks)
        self.assertIn("5", ticks)
        # The same runs in the CSV.
        self.assertEqual(list(read_csv(out)), ["fedavg", "median"])

    def test_compare_runs_share_data_and_seeds(self):
        out = self.path("cmp2.csv")
        self.ok(["--rounds", "4", "--plugin-dir", self.thirdparty,
                 "--compare", "fedavg,good", "--csv", out])
        runs = read_csv(out)
        self.assertEqual(list(runs), ["fedavg", "good"])
        # agg-good is a weighted mean too: the same inputs, the same run.
        for a, b in zip(runs["fedavg"], runs["good"]):
            self.assertAlmostEqual(a[1], b[1], places=6)
        # Round 0 is the shared initial adapter.
        self.assertEqual(runs["fedavg"][0], runs["good"][0])

    def test_compare_every_built_aggregator_under_attack(self):
        # fedmedian, trimmed, krum, ... when they are built; only by name.
        names = sorted(os.path.basename(p)[4:-3]
                       for p in glob.glob(os.path.join(BUILD, "plugins", "agg-*.so")))
        self.assertIn("fedavg", names)
        out = self.path("all.csv")
        r = run_sim(["--byzantine", "2:gaussian", "--compare", ",".join(names), "--csv", out])
        if r.returncode != 0:
            # An aggregator may refuse its default settings for 10 inputs;
            # the refusal must then be one line naming it.
            lines = r.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, r.stderr)
            self.assertTrue(any(n in lines[0] for n in names), lines[0])
            return
        runs = read_csv(out)
        self.assertEqual(list(runs), names)
        # A coordinate-wise median ignores 2 wild inputs of 10.
        if "fedmedian" in runs:
            self.assertGreater(runs["fedmedian"][-1][1], runs["fedavg"][-1][1] + 0.3)

    def test_compare_noise_runs_one_epsilon_each(self):
        out = self.path("eps.csv")
        r = self.ok(["--rounds", "3", "--noise", "laplace", "--compare-noise", "inf,100,1",
                     "--csv", out])
        runs = read_csv(out)
        self.assertEqual(list(runs), ["eps=inf", "eps=100", "eps=1"])
        self.assertEqual(runs["eps=inf"][-1][3], float("inf"))
        self.assertEqual(runs["eps=100"][-1][3], 300)
        self.assertEqual(runs["eps=1"][-1][3], 3)
        self.assertIn("NOT private", r.stderr)

    def test_progress_bar_on_a_terminal_plain_lines_otherwise(self):
        master, slave = os.openpty()
        try:
            p = subprocess.Popen([sim_path(), "--rounds", "4"], stdout=subprocess.PIPE,
                                 stderr=slave, text=True)
            os.close(slave)
            slave = None
            chunks = []
            while True:
                try:
                    b = os.read(master, 4096)
                except OSError:  # EIO: the child closed its end
                    break
                if not b:
                    break
                chunks.append(b)
            p.wait(timeout=TIMEOUT)
        finally:
            os.close(master)
            if slave is not None:
                os.close(slave)
        self.assertEqual(p.returncode, 0)
        tty = b"".join(chunks).decode()
        self.assertIn("\r", tty)
        self.assertIn("[########################] round 4/4", tty)
        self.assertNotIn("round 2/4 accuracy", tty)
        # Not a terminal: one plain line per round.
        r = self.ok(["--rounds", "4"])
        self.assertNotIn("\r", r.stderr)
        for i in range(5):
            self.assertIn("fedavg: round %d/4 accuracy " % i, r.stderr)

    # ---- splits, attackers, noise ----

    def test_dirichlet_split(self):
        out = self.path("dir.csv")
        r = self.ok(["--split", "dirichlet:0.3", "--rounds", "10", "--csv", out])
        self.assertIn("Dirichlet", r.stderr)
        runs = read_csv(out)
        self.assertGreater(runs["fedavg"][-1][1], 0.5)
        honest, _ = self.honest_run()
        self.assertNotEqual(runs["fedavg"][10], honest["fedavg"][10])
        # Very skewed with many clients: some shards are empty and sit out.
        r = self.ok(["--split", "dirichlet:0.01", "--clients", "50", "--rounds", "2"])
        self.assertIn("some empty", r.stderr)

    def test_gaussian_attackers_wreck_fedavg_but_not_the_median(self):
        honest, _ = self.honest_run()
        acc_honest = honest["fedavg"][-1][1]
        out = self.path("byz.csv")
        r = self.ok(["--byzantine", "2:gaussian", "--plugin-dir", self.thirdparty,
                     "--compare", "fedavg,median", "--csv", out])
        self.assertIn("clients 1..2 are Byzantine (gaussian)", r.stderr)
        runs = read_csv(out)
        self.assertLess(runs["fedavg"][-1][1], acc_honest - 0.3)
        self.assertGreater(runs["median"][-1][1], acc_honest - 0.1)

    def test_signflip_and_labelflip_attackers_change_the_run(self):
        honest, _ = self.honest_run()
        for kind in ["signflip", "labelflip"]:
            out = self.path(kind + ".csv")
            self.ok(["--byzantine", "3:" + kind, "--csv", out])
            runs = read_csv(out)
            self.assertEqual(len(runs["fedavg"]), 21)
            self.assertNotEqual(runs["fedavg"][-1], honest["fedavg"][-1], kind)
        # A larger sign-flipping step hurts more than s = 1.
        out = self.path("signflip5.csv")
        self.ok(["--byzantine", "3:signflip", "--byz-scale", "5", "--csv", out])
        self.assertLess(read_csv(out)["fedavg"][-1][1],
                        read_csv(self.path("signflip.csv"))["fedavg"][-1][1])

    def test_laplace_noise_charges_epsilon_per_round(self):
        out = self.path("noise.csv")
        r = self.ok(["--noise", "laplace", "--epsilon", "1", "--clip", "1", "--csv", out])
        rows = read_csv(out)["fedavg"]
        self.assertEqual([x[3] for x in rows], [float(i) for i in range(21)])
        self.assertIn("NOT private", r.stderr)
        summary = r.stdout.strip().splitlines()[1].split()
        self.assertEqual(summary[0], "fedavg")
        self.assertEqual(summary[-1], "20")

    def test_rdp_accountant_composes_tighter(self):
        basic, rdp = self.path("basic.csv"), self.path("rdp.csv")
        self.ok(["--noise", "laplace", "--epsilon", "0.1", "--csv", basic])
        r = self.ok(["--noise", "laplace", "--epsilon", "0.1", "--accountant", "rdp",
                     "--target-delta", "1e-6", "--csv", rdp])
        b = [x[3] for x in read_csv(basic)["fedavg"]]
        d = [x[3] for x in read_csv(rdp)["fedavg"]]
        self.assertAlmostEqual(b[-1], 2.0)
        # Never above basic composition, strictly below it after 20 syncs
        # (1.835 measured), and never decreasing.
        self.assertTrue(all(x <= y + 1e-9 for x, y in zip(d, b)), (d, b))
        self.assertLess(d[-1], 1.9)
        self.assertEqual(d, sorted(d))
        self.assertIn("1e-06", r.stdout)  # the delta column of the summary
        bad = run_sim(["--accountant", "moments"])
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("expected basic or rdp", bad.stderr)

    def test_every_built_noise_mechanism(self):
        # dp-gaussian, dp-none, ... when built; delta > 0 for those that
        # need it, and a refusal must be one line naming the plugin.
        names = sorted(os.path.basename(p)[3:-3]
                       for p in glob.glob(os.path.join(BUILD, "plugins", "dp-*.so")))
        self.assertIn("laplace", names)
        for name in names:
            out = self.path("noise-%s.csv" % name)
            r = run_sim(["--rounds", "3", "--noise", name, "--epsilon", "2", "--delta", "1e-5",
                         "--csv", out])
            if r.returncode != 0:
                lines = r.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, r.stderr)
                self.assertIn("dp-" + name, lines[0])
                continue
            eps = [x[3] for x in read_csv(out)["fedavg"]]
            self.assertEqual(eps[0], 0, name)
            # Basic composition: three equal charges (inf for no privacy).
            self.assertEqual(eps[3], 3 * eps[1], name)

    # ---- data ----

    def test_gzip_csv_with_header_and_label_column(self):
        # Two separable classes, 10 features in [0, 50], label first.
        rng = random.Random(3)
        text = io.StringIO()
        text.write("label," + ",".join("f%d" % i for i in range(10)) + "\n")
        for i in range(300):
            y = i % 2
            feats = [rng.uniform(0, 20) + (30 if (y and j < 3) else 0) for j in range(10)]
            text.write("%d,%s\n" % (y + 5, ",".join("%.3f" % v for v in feats)))
        data = self.path("sep.csv.gz")
        with gzip.open(data, "wt") as f:
            f.write(text.getvalue())
        out = self.path("sep.csv")
        r = self.ok(["--data", data, "--label-column", "1", "--clients", "4",
                     "--rounds", "10", "--csv", out])
        self.assertIn("header skipped", r.stderr)
        self.assertIn("10 features", r.stderr)
        self.assertIn("2 classes", r.stderr)
        self.assertGreaterEqual(read_csv(out)["fedavg"][-1][1], 0.9)

    # ---- bad input: non-zero exit, one clear line ----

    def refused(self, args, *want):
        r = run_sim(args)
        self.assertNotEqual(r.returncode, 0, args)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        for w in want:
            self.assertIn(w, lines[0])
        self.assertEqual(r.stdout, "")
        return lines[0]

    def write(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def test_bad_inputs(self):
        missing = self.path("no-such.csv")
        self.refused(["--data", missing], missing, "No such file")
        bad = self.write("bad.csv", "1,2,3,4,5,6,7,8,0\n1,2,3,x,5,6,7,8,1\n")
        self.refused(["--data", bad], "bad.csv:2", "column 4", "'x' is not a number")
        ragged = self.write("ragged.csv", "1,2,3,4,5,6,7,8,0\n1,2,3,1\n")
        self.refused(["--data", ragged], "ragged.csv:2", "4 columns, expected 9")
        frac = self.write("frac.csv", "1,2,3,4,5,6,7,8,0.5\n")
        self.refused(["--data", frac], "frac.csv:1", "label", "not an integer")
        empty = self.write("empty.csv", "\n\n")
        self.refused(["--data", empty], "no data rows")
        one = self.write("one.csv", "1,2,3,4,5,6,7,8,0\n1,2,3,4,5,6,7,8,0\n")
        self.refused(["--data", one], "at least 2 classes")
        self.refused(["--clients", "0"], "--clients")
        self.refused(["--clients", "ten"], "--clients")
        self.refused(["--aggregator", "nosuch"], "agg-nosuch.so", "not found")
        self.refused(["--noise", "nosuch"], "dp-nosuch.so")
        self.refused(["--split", "dirichlet:-1"], "--split")
        self.refused(["--byzantine", "2:evil"], "--byzantine", "evil")
        self.refused(["--byzantine", "10:gaussian"], "no honest client")
        self.refused(["--noise", "laplace", "--epsilon", "0"], "--epsilon")
        self.refused(["--epsilon", "1"], "--noise")
        self.refused(["--trainer-param", "rank=x"], "--trainer-param rank=x")
        self.refused(["--agg-param", "krum.f=1"], "krum")
        self.refused(["--compare", "fedavg,fedavg"], "twice")
        self.refused(["--test-fraction", "1.5"], "--test-fraction")
        self.refused(["--no-such-option"], "--no-such-option")

    # ---- plugins from elsewhere ----

    def test_third_party_aggregator_from_plugin_dir(self):
        out = self.path("median.csv")
        self.ok(["--plugin-dir", self.thirdparty, "--aggregator", "median", "--csv", out])
        runs = read_csv(out)
        self.assertEqual(list(runs), ["median"])
        self.assertGreaterEqual(runs["median"][-1][1], 0.85)
        # Settings reach it: --agg-param A.K=V.
        self.ok(["--plugin-dir", self.thirdparty, "--aggregator", "median", "--rounds", "2",
                 "--agg-param", "median.even_rule=lower"])
        # Also through $SOVMESH_PLUGIN_PATH, and not without either.
        self.ok(["--aggregator", "median", "--rounds", "2"],
                env={"SOVMESH_PLUGIN_PATH": self.thirdparty})
        self.refused(["--aggregator", "median", "--rounds", "2"], "agg-median.so")


if __name__ == "__main__":
    unittest.main()
