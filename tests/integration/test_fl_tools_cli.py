"""The offline research tools: sovmesh fl aggregate / fl noise."""
import json
import math
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import (SOVMESH, TEST_PLUGIN_DIR, read_safetensors,  # noqa: E402
                             run, write_safetensors)


class FlToolsTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="sovmesh-fl-")
        self.dir = self.tmp.name
        # The client reads the plugin path from the config; keep it clean.
        self.env = {"SOVMESH_STATE_DIR": os.path.join(self.dir, "state"), "HOME": self.dir}

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def sovmesh(self, *args, env=None):
        e = dict(self.env)
        if env:
            e.update(env)
        return run([SOVMESH] + list(args), env=e)

    def adapter(self, name, a_vals, b_vals, dtype="F32"):
        p = self.path(name)
        write_safetensors(p, {
            "base.layer0.lora_A.weight": (dtype, [2, 3], a_vals),
            "base.layer0.lora_B.weight": (dtype, [3, 2], b_vals),
        })
        return p

    # ---- aggregate ----

    def test_fedavg_weighted(self):
        x = self.adapter("x.safetensors", [1, 2, 3, 4, 5, 6], [0.5] * 6)
        y = self.adapter("y.safetensors", [7, 8, 9, 10, 11, 12], [-0.5] * 6)
        out = self.path("avg.safetensors")
        r = self.sovmesh("fl", "aggregate", "--method", "fedavg", "--out", out,
                         x + ":3", y + ":1")
        self.assertEqual(r.returncode, 0, r.stderr)
        res = read_safetensors(out)
        a = res["base.layer0.lora_A.weight"]
        self.assertEqual(a[0], "F32")
        self.assertEqual(a[1], [2, 3])
        for got, u, v in zip(a[2], [1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]):
            self.assertAlmostEqual(got, (3 * u + v) / 4, places=5)
        for got in res["base.layer0.lora_B.weight"][2]:
            self.assertAlmostEqual(got, 0.25, places=6)

    def test_adapter_directory_output(self):
        x = self.adapter("x.safetensors", [1] * 6, [2] * 6)
        y = self.adapter("y.safetensors", [3] * 6, [4] * 6)
        out = self.path("adapter-out")
        r = self.sovmesh("fl", "aggregate", "--method", "fedavg", "--out", out, x, y)
        self.assertEqual(r.returncode, 0, r.stderr)
        res = read_safetensors(os.path.join(out, "adapter_model.safetensors"))
        self.assertEqual(res["base.layer0.lora_A.weight"][2], [2.0] * 6)
        with open(os.path.join(out, "adapter_config.json")) as f:
            self.assertIsInstance(json.load(f), dict)
        # And an adapter directory is accepted as input.
        out2 = self.path("again.safetensors")
        r = self.sovmesh("fl", "aggregate", "--method", "fedavg", "--out", out2, out, x)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(read_safetensors(out2)["base.layer0.lora_A.weight"][2], [1.5] * 6)

    def test_aggregate_refusals(self):
        x = self.adapter("x.safetensors", [1] * 6, [2] * 6)
        odd = self.path("odd.safetensors")
        write_safetensors(odd, {"base.layer0.lora_A.weight": ("F32", [3, 2], [1] * 6),
                                "base.layer0.lora_B.weight": ("F32", [3, 2], [1] * 6)})
        nan = self.adapter("nan.safetensors", [float("nan")] + [1] * 5, [2] * 6)
        bad = self.path("bad.safetensors")
        with open(bad, "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
        out = self.path("o.safetensors")
        cases = [
            (["--method", "fedavg", "--out", out, x, odd], "lora_A"),
            (["--method", "fedavg", "--out", out, x, nan], "nan.safetensors"),
            (["--method", "fedavg", "--out", out, x, bad], "bad.safetensors"),
            (["--method", "fedavg", "--out", out, x, self.path("missing.safetensors")],
             "missing.safetensors"),
            (["--method", "fedavg", "--out", out, x + ":-2"], "weight must be a number > 0"),
            (["--method", "fedavg", "--out", out, x + ":0"], "weight must be a number > 0"),
            (["--method", "nosuch", "--out", out, x], "agg-nosuch.so"),
            (["--method", "../evil", "--out", out, x], "evil"),
            (["--method", "fedavg", "--param", "beta=0.1", "--out", out, x], "beta"),
            (["--method", "fedavg", x], "--out"),
            (["--out", out, x], "--method"),
            (["--method", "fedavg", "--out", out], "at least one input"),
        ]
        for args, needle in cases:
            with self.subTest(args=args):
                r = self.sovmesh("fl", "aggregate", *args)
                self.assertNotEqual(r.returncode, 0, r.stdout)
                self.assertIn("error:", r.stderr)
                self.assertIn(needle, r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1,
                                 "one clear line expected: %r" % r.stderr)
        self.assertFalse(os.path.exists(out), "nothing may be written on refusal")

    def test_nan_weight_finite_check_on_nan_input(self):
        x = self.adapter("x.safetensors", [1] * 6, [2] * 6)
        r = self.sovmesh("fl", "aggregate", "--method", "fedavg", "--out",
                         self.path("o.safetensors"), x + ":nan")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("weight must be a number > 0", r.stderr)

    def test_third_party_plugin_by_name(self):
        # The loader test plugin agg-good.so stands in for a third party's.
        x = self.adapter("x.safetensors", [1] * 6, [2] * 6)
        y = self.adapter("y.safetensors", [3] * 6, [4] * 6)
        out = self.path("g.safetensors")
        r = self.sovmesh("fl", "aggregate", "--method", "good", "--out", out, x, y,
                         env={"SOVMESH_PLUGIN_PATH": TEST_PLUGIN_DIR})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.exists(out))

    # ---- noise ----

    def noise(self, inp, out, *extra):
        return self.sovmesh("--json", "fl", "noise", "--mechanism", "laplace", "--epsilon",
                            "1", "--clip", "1", *extra, inp, out)

    def test_noise_perturbs_and_reports_cost(self):
        x = self.adapter("x.safetensors", [0.1] * 6, [0.05] * 6)
        out = self.path("n.safetensors")
        r = self.noise(x, out)
        self.assertEqual(r.returncode, 0, r.stderr)
        cost = json.loads(r.stdout)
        self.assertEqual(cost["epsilon"], 1.0)
        self.assertEqual(cost["family"], "laplace")
        self.assertEqual(cost["sensitivity"], 2.0)  # replace-one: 2 * clip
        self.assertFalse(cost["deterministic"])
        res = read_safetensors(out)
        vals = res["base.layer0.lora_A.weight"][2] + res["base.layer0.lora_B.weight"][2]
        self.assertTrue(all(math.isfinite(v) for v in vals))
        self.assertNotEqual(vals, [0.1] * 6 + [0.05] * 6)

    def test_noise_seed_needs_insecure_flag_and_is_reproducible(self):
        x = self.adapter("x.safetensors", [0.1] * 6, [0.05] * 6)
        r = self.noise(x, self.path("a.safetensors"), "--seed", "7")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--insecure-deterministic", r.stderr)
        self.assertFalse(os.path.exists(self.path("a.safetensors")))
        outs = []
        for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
            out = self.path(name + ".safetensors")
            r = self.noise(x, out, "--seed", seed, "--insecure-deterministic")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(json.loads(r.stdout)["deterministic"])
            self.assertIn("not private", r.stderr.lower())
            with open(out, "rb") as f:
                outs.append(f.read())
        self.assertEqual(outs[0], outs[1])
        self.assertNotEqual(outs[0], outs[2])

    def test_noise_refusals(self):
        x = self.adapter("x.safetensors", [0.1] * 6, [0.05] * 6)
        nan = self.adapter("nan.safetensors", [float("inf")] + [1] * 5, [2] * 6)
        out = self.path("n.safetensors")
        cases = [
            (["--mechanism", "laplace", "--epsilon", "0", "--clip", "1", x, out], "epsilon"),
            (["--mechanism", "laplace", "--epsilon", "-1", "--clip", "1", x, out], "epsilon"),
            (["--mechanism", "laplace", "--epsilon", "1", "--clip", "0", x, out], "clip"),
            (["--mechanism", "laplace", "--epsilon", "abc", "--clip", "1", x, out],
             "not a number"),
            (["--mechanism", "laplace", "--epsilon", "1", "--clip", "1", nan, out],
             "nan.safetensors"),
            (["--mechanism", "nosuch", "--epsilon", "1", "--clip", "1", x, out],
             "dp-nosuch.so"),
            (["--mechanism", "laplace", "--epsilon", "1", "--clip", "1", x], "IN OUT"),
            (["--mechanism", "laplace", "--epsilon", "1", "--clip", "1",
              "--param", "sensitivity_factor=-1", x, out], "sensitivity_factor"),
        ]
        for args, needle in cases:
            with self.subTest(args=args):
                r = self.sovmesh("fl", "noise", *args)
                self.assertNotEqual(r.returncode, 0, r.stdout)
                self.assertIn(needle, r.stderr)
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main(verbosity=2)
