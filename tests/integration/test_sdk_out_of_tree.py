#!/usr/bin/env python3
"""The SDK works for a third party: install it, build the example plugin
(sdk/examples/agg-median) OUT OF TREE with nothing but make and pkg-config,
then run it through `sovmesh fl aggregate --method median`.

Environment (set by tests/integration/meson.build):
  SOVMESH_BUILD_ROOT   the meson build directory (already built)
  SOVMESH_SOURCE_ROOT  the source tree
"""
import glob
import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

BUILD = os.environ.get("SOVMESH_BUILD_ROOT", "")
SOURCE = os.environ.get("SOVMESH_SOURCE_ROOT", "")
TIMEOUT = 300  # generous: a slow, busy 2-core machine

# safetensors dtype -> (struct code, size)
DTYPES = {"F32": ("f", 4), "F64": ("d", 8)}


def write_safetensors(path, tensors):
    """tensors: {name: (dtype, shape, flat list of numbers)}.  Layout: u64le
    header length N, N bytes of JSON header, then the raw little-endian
    data in header order."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        code, size = DTYPES[dtype]
        n = 1
        for d in shape:
            n *= d
        assert len(values) == n, name
        blob = struct.pack("<%d%s" % (n, code), *values)
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format allows space padding
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path):
    """{name: (dtype, shape, flat list)}; __metadata__ is skipped."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code, size = DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        count = (e - b) // size
        out[name] = (info["dtype"], info["shape"],
                     list(struct.unpack_from("<%d%s" % (count, code), data, b)))
    return out


def f32(x):
    """x rounded to binary32, as the plugin's F32 output is."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def median(values, lower=False):
    v = sorted(values)
    n = len(v)
    if n % 2 == 1 or lower:
        return v[(n - 1) // 2]
    return v[n // 2 - 1] / 2 + v[n // 2] / 2


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=TIMEOUT, **kw)


# Two tensors of a LoRA-like adapter; values are multiples of 1/4 so every
# median (and every mean of two middle values) is exact in binary32.
A_NAME = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_NAME = "base_model.model.layers.0.self_attn.q_proj.lora_B.weight"
INPUTS = [
    {A_NAME: [1.0, -2.0, 3.5, 0.25, 8.0, -1.0], B_NAME: [0.5, 100.0, -3.0]},
    {A_NAME: [4.0, -1.0, 0.0, 0.75, -8.0, -1.0], B_NAME: [1.5, -100.0, 2.0]},
    {A_NAME: [2.0, -3.0, 1.0, 0.5, 1.0, 5.0], B_NAME: [-0.5, 7.0, 2.5]},
    {A_NAME: [9.0, 6.0, -1.0, 0.25, 2.0, 2.0], B_NAME: [0.0, 3.0, -2.5]},
]
SHAPES = {A_NAME: [2, 3], B_NAME: [3, 1]}


class SdkOutOfTree(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not BUILD or not SOURCE:
            raise RuntimeError("set SOVMESH_BUILD_ROOT and SOVMESH_SOURCE_ROOT "
                               "(meson test does)")
        cls._tmp = tempfile.TemporaryDirectory(prefix="sovmesh-sdk-")
        cls.tmp = cls._tmp.name
        try:
            cls._install_and_build()
        except BaseException:
            cls._tmp.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    @classmethod
    def _install_and_build(cls):
        cls.destdir = os.path.join(cls.tmp, "destdir")
        r = run(["meson", "install", "-C", BUILD, "--destdir", cls.destdir,
                 "--no-rebuild", "--quiet"])
        if r.returncode != 0:
            raise RuntimeError("meson install failed:\n" + r.stdout + r.stderr)
        pcs = glob.glob(os.path.join(cls.destdir, "**", "pkgconfig",
                                     "sovmesh-plugin.pc"), recursive=True)
        if len(pcs) != 1:
            raise RuntimeError("expected one installed sovmesh-plugin.pc, found %r" % pcs)
        cls.pcdir = os.path.dirname(pcs[0])
        # <libdir>/pkgconfig/ -> <libdir>/sovmesh/plugins (the .pc's plugindir)
        cls.expected_plugindir = os.path.join(os.path.dirname(cls.pcdir),
                                              "sovmesh", "plugins")

        # The example, copied away from the source tree so that nothing but
        # the installed SDK can satisfy its includes.
        cls.srcdir = os.path.join(cls.tmp, "agg-median")
        shutil.copytree(os.path.join(SOURCE, "sdk", "examples", "agg-median"),
                        cls.srcdir)
        for leftover in glob.glob(os.path.join(cls.srcdir, "*.so")):
            os.unlink(leftover)
        cls.make_env = dict(os.environ)
        cls.make_env.pop("MAKEFLAGS", None)
        for var in ("CFLAGS", "LDFLAGS", "CPPFLAGS"):
            cls.make_env.pop(var, None)  # the Makefile's own defaults
        cls.make_env["PKG_CONFIG_PATH"] = cls.pcdir
        # Only the staged SDK: no system-wide copy may stand in for it.
        cls.make_env["PKG_CONFIG_LIBDIR"] = cls.pcdir
        cls.make_env["PKG_CONFIG_SYSROOT_DIR"] = cls.destdir
        r = run(["make", "-C", cls.srcdir], env=cls.make_env)
        if r.returncode != 0:
            raise RuntimeError("make failed:\n" + r.stdout + r.stderr)
        cls.built = os.path.join(cls.srcdir, "agg-median.so")
        # With a sysroot, pkg-config's plugindir already points into destdir.
        r = run(["make", "-C", cls.srcdir, "install"], env=cls.make_env)
        if r.returncode != 0:
            raise RuntimeError("make install failed:\n" + r.stdout + r.stderr)

    # ---- the build ----

    def test_build_used_the_installed_sdk(self):
        r = run(["pkg-config", "--cflags", "sovmesh-plugin"], env=self.make_env)
        self.assertEqual(r.returncode, 0, r.stderr)
        flags = r.stdout.split()
        self.assertIn("-fvisibility=hidden", flags)
        incs = [f[2:] for f in flags if f.startswith("-I")]
        self.assertEqual(len(incs), 1, flags)
        self.assertTrue(incs[0].startswith(self.destdir + os.sep), incs[0])
        self.assertTrue(os.path.isfile(os.path.join(incs[0], "sovmesh", "aggregator.h")))

    def test_make_install_puts_it_in_plugindir(self):
        installed = os.path.join(self.expected_plugindir, "agg-median.so")
        self.assertTrue(os.path.isfile(installed), installed)
        with open(installed, "rb") as a, open(self.built, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_exports_exactly_one_symbol(self):
        r = run(["nm", "-D", "--defined-only", self.built])
        self.assertEqual(r.returncode, 0, r.stderr)
        names = [line.split()[-1] for line in r.stdout.splitlines() if line.strip()]
        self.assertEqual(names, ["sovmesh_plugin_entry"])

    def test_links_no_core_symbol(self):
        # Undefined dynamic symbols may come from libc only (versioned
        # GLIBC_ names or weak hooks), never from the daemon.
        r = run(["nm", "-D", "--undefined-only", self.built])
        self.assertEqual(r.returncode, 0, r.stderr)
        for line in r.stdout.splitlines():
            self.assertNotIn("sovmesh", line)

    def test_make_without_sdk_says_so(self):
        env = dict(self.make_env)
        empty = os.path.join(self.tmp, "no-pkgconfig")
        os.makedirs(empty, exist_ok=True)
        env["PKG_CONFIG_PATH"] = empty
        env["PKG_CONFIG_LIBDIR"] = empty
        scratch = os.path.join(self.tmp, "scratch-nosdk")
        shutil.copytree(self.srcdir, scratch)
        run(["make", "-C", scratch, "clean"], env=env)
        r = run(["make", "-C", scratch], env=env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("sovmesh-plugin", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(scratch, "agg-median.so")))

    # ---- running it ----

    def write_inputs(self, workdir, inputs, dtype="F32"):
        paths = []
        for i, values in enumerate(inputs):
            p = os.path.join(workdir, "in%d.safetensors" % i)
            write_safetensors(p, {name: (dtype, SHAPES[name], v)
                                  for name, v in values.items()})
            paths.append(p)
        return paths

    def aggregate(self, args):
        env = dict(os.environ)
        env["SOVMESH_PLUGIN_PATH"] = self.expected_plugindir
        env["HOME"] = self.tmp  # nothing of the user's may leak in
        return run([os.path.join(BUILD, "core", "sovmesh"), "fl", "aggregate",
                    "--method", "median"] + args, env=env)

    def check_median(self, n, extra_args, lower=False, weights=None, dtype="F32"):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            paths = self.write_inputs(work, INPUTS[:n], dtype)
            if weights:
                paths = ["%s:%s" % (p, w) for p, w in zip(paths, weights)]
            out = os.path.join(work, "out.safetensors")
            r = self.aggregate(extra_args + ["--out", out] + paths)
            self.assertEqual(r.returncode, 0, r.stderr)
            got = read_safetensors(out)
            self.assertEqual(sorted(got), sorted(SHAPES))
            for name, shape in SHAPES.items():
                gdtype, gshape, gvals = got[name]
                self.assertEqual(gdtype, dtype)
                self.assertEqual(gshape, shape)
                want = [median([inp[name][j] for inp in INPUTS[:n]], lower)
                        for j in range(len(gvals))]
                if dtype == "F32":
                    want = [f32(w) for w in want]
                self.assertEqual(gvals, want, name)

    def test_median_of_three(self):
        self.check_median(3, [])

    def test_weights_are_ignored(self):
        # A party claiming 1000x the samples must not decide the result.
        self.check_median(3, [], weights=["1000", "1", "0.5"])

    def test_even_count_default_is_mean_of_middle_two(self):
        self.check_median(4, [])

    def test_even_rule_lower(self):
        self.check_median(4, ["--param", "even_rule=lower"], lower=True)

    def test_f64(self):
        self.check_median(3, [], dtype="F64")

    def test_bad_setting_value_refused(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            paths = self.write_inputs(work, INPUTS[:3])
            out = os.path.join(work, "out.safetensors")
            r = self.aggregate(["--param", "even_rule=bogus", "--out", out] + paths)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("error:", r.stderr)
            self.assertIn("even_rule", r.stderr)
            self.assertIn("bogus", r.stderr)
            self.assertFalse(os.path.exists(out))

    def test_unknown_setting_refused(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            paths = self.write_inputs(work, INPUTS[:3])
            out = os.path.join(work, "out.safetensors")
            r = self.aggregate(["--param", "no_such_key=1", "--out", out] + paths)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("no_such_key", r.stderr)
            self.assertFalse(os.path.exists(out))

    def test_mismatched_shape_refused(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            paths = self.write_inputs(work, INPUTS[:2])
            odd = os.path.join(work, "odd.safetensors")
            write_safetensors(odd, {A_NAME: ("F32", [3, 2], INPUTS[2][A_NAME]),
                                    B_NAME: ("F32", [3, 1], INPUTS[2][B_NAME])})
            out = os.path.join(work, "out.safetensors")
            r = self.aggregate(["--out", out] + paths + [odd])
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("error:", r.stderr)
            self.assertIn(A_NAME, r.stderr)
            self.assertFalse(os.path.exists(out))

    def test_non_finite_value_refused(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            bad = [dict(v) for v in INPUTS[:3]]
            bad[1][B_NAME] = [0.0, float("inf"), 1.0]
            paths = self.write_inputs(work, bad)
            out = os.path.join(work, "out.safetensors")
            r = self.aggregate(["--out", out] + paths)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("error:", r.stderr)
            self.assertIn(B_NAME, r.stderr)
            self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main(verbosity=2)
