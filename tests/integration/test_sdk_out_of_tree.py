#!/usr/bin/env python3
"""The SDK works for a third party: install it, build the example plugins
OUT OF TREE with nothing but make and pkg-config, and run them:
sdk/examples/agg-median through `sovmesh fl aggregate --method median`,
sdk/examples/dp-signrr through `sovmesh fl noise --mechanism signrr`, the
simulator, and (for cost() and the refusals the tools never let through)
a minimal host made with ctypes.

Environment (set by tests/integration/meson.build):
  SOVMESH_BUILD_ROOT   the meson build directory (already built)
  SOVMESH_SOURCE_ROOT  the source tree
"""
import ctypes
import glob
import json
import math
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


class StagedSdk:
    """The SDK installed once per module run into a staging directory
    (`meson install --destdir`), and the environment that makes make +
    pkg-config see that copy and nothing else."""

    def __init__(self):
        if not BUILD or not SOURCE:
            raise RuntimeError("set SOVMESH_BUILD_ROOT and SOVMESH_SOURCE_ROOT "
                               "(meson test does)")
        self._tmp = tempfile.TemporaryDirectory(prefix="sovmesh-sdk-")
        self.tmp = self._tmp.name
        try:
            self._install()
        except BaseException:
            self._tmp.cleanup()
            raise

    def cleanup(self):
        self._tmp.cleanup()

    def _install(self):
        self.destdir = os.path.join(self.tmp, "destdir")
        r = run(["meson", "install", "-C", BUILD, "--destdir", self.destdir,
                 "--no-rebuild", "--quiet"])
        if r.returncode != 0:
            raise RuntimeError("meson install failed:\n" + r.stdout + r.stderr)
        pcs = glob.glob(os.path.join(self.destdir, "**", "pkgconfig",
                                     "sovmesh-plugin.pc"), recursive=True)
        if len(pcs) != 1:
            raise RuntimeError("expected one installed sovmesh-plugin.pc, found %r" % pcs)
        self.pcdir = os.path.dirname(pcs[0])
        # <libdir>/pkgconfig/ -> <libdir>/sovmesh/plugins (the .pc's plugindir)
        self.expected_plugindir = os.path.join(os.path.dirname(self.pcdir),
                                               "sovmesh", "plugins")
        self.make_env = dict(os.environ)
        self.make_env.pop("MAKEFLAGS", None)
        for var in ("CFLAGS", "LDFLAGS", "CPPFLAGS", "LDLIBS"):
            self.make_env.pop(var, None)  # the Makefile's own defaults
        self.make_env["PKG_CONFIG_PATH"] = self.pcdir
        # Only the staged SDK: no system-wide copy may stand in for it.
        self.make_env["PKG_CONFIG_LIBDIR"] = self.pcdir
        self.make_env["PKG_CONFIG_SYSROOT_DIR"] = self.destdir

    def build_example(self, example, plugin):
        """Copy sdk/examples/EXAMPLE away from the source tree (so nothing
        but the installed SDK can satisfy its includes), `make` and `make
        install` it.  Returns (srcdir, path of the built .so)."""
        srcdir = os.path.join(self.tmp, example)
        shutil.copytree(os.path.join(SOURCE, "sdk", "examples", example), srcdir)
        for leftover in glob.glob(os.path.join(srcdir, "*.so")):
            os.unlink(leftover)
        r = run(["make", "-C", srcdir], env=self.make_env)
        if r.returncode != 0:
            raise RuntimeError("make failed:\n" + r.stdout + r.stderr)
        # With a sysroot, pkg-config's plugindir already points into destdir.
        r = run(["make", "-C", srcdir, "install"], env=self.make_env)
        if r.returncode != 0:
            raise RuntimeError("make install failed:\n" + r.stdout + r.stderr)
        return srcdir, os.path.join(srcdir, plugin)


STAGED = None


def setUpModule():
    global STAGED
    STAGED = StagedSdk()


def tearDownModule():
    if STAGED:
        STAGED.cleanup()


class SdkOutOfTree(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = STAGED.tmp
        cls.destdir = STAGED.destdir
        cls.pcdir = STAGED.pcdir
        cls.expected_plugindir = STAGED.expected_plugindir
        cls.make_env = STAGED.make_env
        cls.srcdir, cls.built = STAGED.build_example("agg-median", "agg-median.so")

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


# ---------------------------------------------------------------------------
# The noise example: sdk/examples/dp-signrr (randomized response on signs).

SIGNRR_TENSORS = {
    A_NAME: ([2, 3], [1.0, -2.0, 0.0, 0.25, -8.0, 3.5]),
    B_NAME: ([3, 1], [-0.5, 100.0, -3.0]),
}
SIGNRR_D = 9  # values in SIGNRR_TENSORS


def sign(x):
    """The plugin's rule: negative -> -1, anything else (0 too) -> +1."""
    return -1.0 if x < 0 else 1.0


def keep_probability(eps_value):
    return 1.0 / (1.0 + math.exp(-eps_value))


# ---- a minimal host, with ctypes, to call create/cost/perturb directly ----

class Tensor(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int),
                ("ndim", ctypes.c_uint32), ("shape", ctypes.c_uint64 * 8),
                ("data", ctypes.c_void_p), ("nbytes", ctypes.c_uint64)]


class TensorSet(ctypes.Structure):
    _fields_ = [("count", ctypes.c_size_t), ("tensors", ctypes.POINTER(Tensor)),
                ("metadata_json", ctypes.c_char_p)]


class Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * 512)]


class NoiseParams(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("epsilon", ctypes.c_double),
                ("delta", ctypes.c_double), ("clip", ctypes.c_double)]


class PrivacyCost(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("epsilon", ctypes.c_double),
                ("delta", ctypes.c_double), ("family", ctypes.c_int),
                ("noise_multiplier", ctypes.c_double), ("sensitivity", ctypes.c_double)]


# sovmesh_host_api's slots in order (plugin.h); all function pointers.
HOST_SLOTS = ["log", "vlog", "alloc", "calloc", "realloc", "free", "now_ms",
              "wall_time", "timer_start", "timer_stop", "watch_add", "watch_update",
              "watch_remove", "random_bytes", "queue_work", "setting_bool",
              "setting_int", "setting_double", "setting_string", "node_name",
              "plugin_state_dir", "tensor_set_new", "tensor_init", "tensor_set_free",
              "adapter_read", "adapter_write", "http_request", "http_cancel",
              "event_emit", "event_subscribe"]


class HostApi(ctypes.Structure):
    _fields_ = ([("size", ctypes.c_uint32), ("abi_major", ctypes.c_uint16),
                 ("abi_minor", ctypes.c_uint16)] +
                [(n, ctypes.c_void_p) for n in HOST_SLOTS])


CREATE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(HostApi),
                             ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(Error))
DESTROY_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
COST_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(NoiseParams),
                           ctypes.POINTER(PrivacyCost), ctypes.POINTER(Error))
PERTURB_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(TensorSet),
                              ctypes.POINTER(NoiseParams), ctypes.POINTER(PrivacyCost),
                              ctypes.POINTER(Error))


class NoiseOps(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("cost", COST_FN), ("perturb", PERTURB_FN)]


class Descriptor(ctypes.Structure):
    _fields_ = [("magic", ctypes.c_uint64), ("size", ctypes.c_uint32),
                ("abi_major", ctypes.c_uint16), ("abi_minor", ctypes.c_uint16),
                ("kind", ctypes.c_uint32), ("name", ctypes.c_char_p),
                ("version", ctypes.c_char_p), ("license", ctypes.c_char_p),
                ("description", ctypes.c_char_p), ("settings", ctypes.c_void_p),
                ("create", CREATE_FN), ("destroy", DESTROY_FN),
                ("ops", ctypes.POINTER(NoiseOps))]


DTYPE_F32, DTYPE_F16, DTYPE_F64 = 1, 2, 4
FAMILY_OTHER = 0
EINVAL, EIO, ENOTSUP = 22, 5, 95


class MiniHost:
    """Just the host slots a noise plugin uses: log, memory, random_bytes
    and settings.  `settings` maps names to values; `rng_fails` makes
    random_bytes return -EIO; `no_rng` leaves the slot NULL; `words`, a
    list of 64-bit integers, makes random_bytes return exactly those,
    little-endian, over and over (to aim coins at the threshold)."""

    def __init__(self, so_path, settings=None, rng_fails=False, no_rng=False, words=None):
        self.lib = ctypes.CDLL(so_path)
        self.lib.sovmesh_plugin_entry.restype = ctypes.POINTER(Descriptor)
        self.desc = self.lib.sovmesh_plugin_entry().contents
        libc = ctypes.CDLL(None)
        libc.calloc.restype = ctypes.c_void_p
        libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        self.settings = dict(settings or {})
        self._strings = {}
        self.logs = []
        P, S, V = ctypes.c_void_p, ctypes.c_size_t, None

        def log(host, level, fmt):  # variadic in C; the format is enough here
            self.logs.append((level, fmt))

        def rand(host, buf, n):
            if rng_fails:
                return -EIO
            if words:
                pattern = struct.pack("<%dQ" % len(words), *words)
                data = (pattern * (n // len(pattern) + 1))[:n]
            else:
                data = os.urandom(n)
            ctypes.memmove(buf, data, n)
            return 0

        def setting_string(host, name):
            v = self.settings.get(name.decode(), None)
            if v is None:
                v = {"magnitude": "l1"}.get(name.decode())
            if v is None:
                return None
            buf = self._strings.setdefault(v, ctypes.create_string_buffer(v.encode()))
            return ctypes.addressof(buf)

        def setting_bool(host, name):
            return 1 if self.settings.get(name.decode(), False) else 0

        self._cbs = {
            "log": ctypes.CFUNCTYPE(V, P, ctypes.c_int, ctypes.c_char_p)(log),
            "alloc": ctypes.CFUNCTYPE(P, P, S)(lambda h, n: libc.malloc(n)),
            "calloc": ctypes.CFUNCTYPE(P, P, S, S)(lambda h, n, m: libc.calloc(n, m)),
            "free": ctypes.CFUNCTYPE(V, P, P)(lambda h, p: libc.free(p)),
            "setting_string": ctypes.CFUNCTYPE(P, P, ctypes.c_char_p)(setting_string),
            "setting_bool": ctypes.CFUNCTYPE(ctypes.c_int, P, ctypes.c_char_p)(setting_bool),
        }
        if not no_rng:
            self._cbs["random_bytes"] = ctypes.CFUNCTYPE(ctypes.c_int, P, P, S)(rand)
        self.api = HostApi(size=ctypes.sizeof(HostApi), abi_major=1, abi_minor=0)
        for name, cb in self._cbs.items():
            setattr(self.api, name, ctypes.cast(cb, ctypes.c_void_p))
        self.instance = ctypes.c_void_p()

    def create(self):
        err = Error()
        r = self.desc.create(None, ctypes.byref(self.api), ctypes.byref(self.instance),
                             ctypes.byref(err))
        return r, err.message.decode()

    def destroy(self):
        if self.instance:
            self.desc.destroy(self.instance)
            self.instance = ctypes.c_void_p()

    @staticmethod
    def params(epsilon=1.0, clip=1.0, delta=0.0):
        return NoiseParams(size=ctypes.sizeof(NoiseParams), epsilon=epsilon, delta=delta,
                           clip=clip)

    def cost(self, params):
        cost = PrivacyCost(size=ctypes.sizeof(PrivacyCost))
        err = Error()
        r = self.desc.ops.contents.cost(self.instance, ctypes.byref(params),
                                        ctypes.byref(cost), ctypes.byref(err))
        return r, cost, err.message.decode()

    def perturb(self, values, params, dtype=DTYPE_F64):
        """values: flat list, one tensor 't'.  Returns (rc, values after, cost, msg)."""
        code, size = {DTYPE_F64: ("d", 8), DTYPE_F32: ("f", 4), DTYPE_F16: ("e", 2)}[dtype]
        buf = ctypes.create_string_buffer(struct.pack("<%d%s" % (len(values), code), *values))
        t = Tensor(name=b"t", dtype=dtype, ndim=1, data=ctypes.addressof(buf),
                   nbytes=len(values) * size)
        t.shape[0] = len(values)
        ts = TensorSet(count=1, tensors=ctypes.pointer(t), metadata_json=None)
        cost = PrivacyCost(size=ctypes.sizeof(PrivacyCost))
        err = Error()
        r = self.desc.ops.contents.perturb(self.instance, ctypes.byref(ts),
                                           ctypes.byref(params), ctypes.byref(cost),
                                           ctypes.byref(err))
        after = list(struct.unpack("<%d%s" % (len(values), code), buf.raw[:len(values) * size]))
        return r, after, cost, err.message.decode()


class SdkNoiseExample(unittest.TestCase):
    """sdk/examples/dp-signrr, built against the staged SDK."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = STAGED.tmp
        cls.make_env = STAGED.make_env
        cls.plugindir = STAGED.expected_plugindir
        cls.srcdir, cls.built = STAGED.build_example("dp-signrr", "dp-signrr.so")

    # ---- the build ----

    def test_make_install_puts_it_in_plugindir(self):
        installed = os.path.join(self.plugindir, "dp-signrr.so")
        self.assertTrue(os.path.isfile(installed), installed)
        with open(installed, "rb") as a, open(self.built, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_exports_exactly_one_symbol(self):
        r = run(["nm", "-D", "--defined-only", self.built])
        self.assertEqual(r.returncode, 0, r.stderr)
        names = [line.split()[-1] for line in r.stdout.splitlines() if line.strip()]
        self.assertEqual(names, ["sovmesh_plugin_entry"])

    def test_links_no_core_symbol(self):
        r = run(["nm", "-D", "--undefined-only", self.built])
        self.assertEqual(r.returncode, 0, r.stderr)
        for line in r.stdout.splitlines():
            self.assertNotIn("sovmesh", line)

    def test_z_defs_refuses_an_undefined_symbol(self):
        # A plugin that calls something the daemon might offer must fail
        # to LINK, not at dlopen time on a user's machine.
        scratch = os.path.join(self.tmp, "signrr-zdefs")
        shutil.copytree(self.srcdir, scratch)
        run(["make", "-C", scratch, "clean"], env=self.make_env)
        with open(os.path.join(scratch, "signrr.c"), "a") as f:
            f.write("\nextern int sovmesh_core_only_symbol(void);\n"
                    "__attribute__((used)) static int use_it(void)\n"
                    "{\n\treturn sovmesh_core_only_symbol();\n}\n")
        r = run(["make", "-C", scratch], env=self.make_env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("sovmesh_core_only_symbol", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(scratch, "dp-signrr.so")))
        # ... and it is -z defs that catches it.
        r = run(["make", "-C", scratch, "ZDEFS="], env=self.make_env)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_make_without_sdk_says_so(self):
        env = dict(self.make_env)
        empty = os.path.join(self.tmp, "no-pkgconfig-signrr")
        os.makedirs(empty, exist_ok=True)
        env["PKG_CONFIG_PATH"] = empty
        env["PKG_CONFIG_LIBDIR"] = empty
        scratch = os.path.join(self.tmp, "signrr-nosdk")
        shutil.copytree(self.srcdir, scratch)
        run(["make", "-C", scratch, "clean"], env=env)
        r = run(["make", "-C", scratch], env=env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("sovmesh-plugin", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(scratch, "dp-signrr.so")))

    # ---- sovmesh fl noise ----

    def noise(self, args, json_out=False):
        env = dict(os.environ)
        env["SOVMESH_PLUGIN_PATH"] = self.plugindir
        env["HOME"] = self.tmp
        cmd = [os.path.join(BUILD, "core", "sovmesh")]
        if json_out:
            cmd.append("--json")
        return run(cmd + ["fl", "noise", "--mechanism", "signrr"] + args, env=env)

    def write_input(self, work, tensors=None, dtype="F32", name="in.safetensors"):
        path = os.path.join(work, name)
        write_safetensors(path, {n: (dtype, shape, v)
                                 for n, (shape, v) in (tensors or SIGNRR_TENSORS).items()})
        return path

    def release(self, work, epsilon, clip, extra=(), tensors=None, dtype="F32",
                out_name="out.safetensors"):
        src = self.write_input(work, tensors, dtype)
        out = os.path.join(work, out_name)
        r = self.noise(["--epsilon", repr(epsilon), "--clip", repr(clip)] + list(extra) +
                       [src, out])
        self.assertEqual(r.returncode, 0, r.stderr)
        return r, out

    def test_release_keeps_names_shapes_dtype_and_reports_cost(self):
        # epsilon' = 60 per value: a flip has probability e^-60, so the
        # release is the input's signs times clip/d.
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            r, out = self.release(work, 60.0 * SIGNRR_D, 1.5)
            self.assertIn("spent epsilon 540, delta 0 (other", r.stdout)
            got = read_safetensors(out)
            self.assertEqual(sorted(got), sorted(SIGNRR_TENSORS))
            for name, (shape, values) in SIGNRR_TENSORS.items():
                gdtype, gshape, gvals = got[name]
                self.assertEqual(gdtype, "F32")
                self.assertEqual(gshape, shape)
                self.assertEqual(gvals, [f32(sign(v) * 1.5 / SIGNRR_D) for v in values], name)

    def test_f64_release_is_f64(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            _, out = self.release(work, 60.0 * SIGNRR_D, 2.0, dtype="F64")
            got = read_safetensors(out)
            for name, (shape, values) in SIGNRR_TENSORS.items():
                self.assertEqual(got[name][0], "F64")
                self.assertEqual(got[name][2], [sign(v) * 2.0 / SIGNRR_D for v in values])

    def test_json_cost_is_family_other_with_zero_delta(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            src = self.write_input(work)
            out = os.path.join(work, "out.safetensors")
            r = self.noise(["--epsilon", "2.5", "--clip", "1", "--delta", "1e-6", src, out],
                           json_out=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            cost = json.loads(r.stdout)
            self.assertEqual(cost["family"], "other")
            self.assertEqual(cost["epsilon"], 2.5)
            self.assertEqual(cost["delta"], 0)  # pure epsilon-DP: spends no delta
            self.assertFalse(cost["deterministic"])

    def test_magnitude_linf(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            _, out = self.release(work, 60.0 * SIGNRR_D, 0.5, ["--param", "magnitude=linf"])
            got = read_safetensors(out)
            for name, (shape, values) in SIGNRR_TENSORS.items():
                self.assertEqual(got[name][2], [sign(v) * 0.5 for v in values])

    def test_debias_divides_by_2p_minus_1(self):
        eps_value = math.log(3)  # p = 3/4, 2p - 1 = 1/2
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            _, out = self.release(work, eps_value * SIGNRR_D, 1.0,
                                  ["--param", "debias=true", "--seed", "3",
                                   "--insecure-deterministic"], dtype="F64")
            want = 1.0 / SIGNRR_D / (2 * keep_probability(eps_value) - 1)
            for name, (_, _, vals) in read_safetensors(out).items():
                for v in vals:
                    self.assertAlmostEqual(abs(v), want, delta=want * 1e-9)

    def test_seeded_runs_are_identical_and_other_seeds_differ(self):
        big = {A_NAME: ([40, 25], [((i * 7919) % 13) - 6.0 for i in range(1000)])}
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            outs = []
            for seed, name in (("5", "a"), ("5", "b"), ("6", "c")):
                r, out = self.release(work, 1.0, 1.0,
                                      ["--seed", seed, "--insecure-deterministic"],
                                      tensors=big, out_name=name + ".safetensors")
                self.assertIn("DETERMINISTIC, NOT PRIVATE", r.stdout)
                with open(out, "rb") as f:
                    outs.append(f.read())
            self.assertEqual(outs[0], outs[1])
            # 1000 coins near 1/2: equal by chance with probability ~2^-1000.
            self.assertNotEqual(outs[0], outs[2])

    def flip_rate(self, work, eps_value, n=4000, seed="11"):
        ones = {A_NAME: ([n], [1.0] * n)}
        _, out = self.release(work, eps_value * n, 1.0,
                              ["--seed", seed, "--insecure-deterministic"], tensors=ones,
                              dtype="F64", out_name="rate-%r.safetensors" % eps_value)
        vals = read_safetensors(out)[A_NAME][2]
        self.assertTrue(all(abs(v) == 1.0 / n for v in vals))
        return sum(1 for v in vals if v < 0) / n

    def test_flip_rate_matches_epsilon(self):
        # P(flip) = 1 / (1 + e^eps').  n = 4000 values, 5 standard
        # deviations of slack (seeded, so the outcome never changes).
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            for eps_value in (math.log(3), 1e-9, 1e-15, 2.0):
                q = 1 - keep_probability(eps_value)
                slack = 5 * math.sqrt(q * (1 - q) / 4000)
                rate = self.flip_rate(work, eps_value)
                self.assertLess(abs(rate - q), slack, (eps_value, rate, q))

    def test_bad_magnitude_refused(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            src = self.write_input(work)
            out = os.path.join(work, "out.safetensors")
            r = self.noise(["--epsilon", "1", "--clip", "1", "--param", "magnitude=l2",
                            src, out])
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("error:", r.stderr)
            self.assertIn("magnitude", r.stderr)
            self.assertIn("l2", r.stderr)
            self.assertFalse(os.path.exists(out))

    def test_unknown_setting_refused(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            src = self.write_input(work)
            out = os.path.join(work, "out.safetensors")
            r = self.noise(["--epsilon", "1", "--clip", "1", "--param", "sigma=2", src, out])
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("sigma", r.stderr)
            self.assertFalse(os.path.exists(out))

    def test_debias_without_signal_refused(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            src = self.write_input(work)
            out = os.path.join(work, "out.safetensors")
            r = self.noise(["--epsilon", "1e-30", "--clip", "1", "--param", "debias=true",
                            src, out])
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("nothing to debias", r.stderr)
            self.assertFalse(os.path.exists(out))

    # ---- the simulator ----

    def test_simulator_runs_it_and_charges_its_epsilon(self):
        with tempfile.TemporaryDirectory(dir=self.tmp) as work:
            csvs = []
            for name in ("a.csv", "b.csv"):
                csv = os.path.join(work, name)
                r = run([os.path.join(BUILD, "sim", "sovmesh-sim"), "-q",
                         "--plugin-dir", self.plugindir, "--noise", "signrr",
                         "--epsilon", "3", "--clients", "4", "--rounds", "3",
                         "--csv", csv], env=dict(os.environ, HOME=self.tmp))
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("NOT private", r.stderr)
                with open(csv) as f:
                    csvs.append(f.read())
            self.assertEqual(csvs[0], csvs[1])  # seeded: the same run twice
            rows = [line.split(",") for line in csvs[0].splitlines()[1:]]
            self.assertEqual([float(row[4]) for row in rows], [0, 3, 6, 9])

    # ---- cost(), perturb() and create() through a minimal host ----

    def host(self, **kw):
        h = MiniHost(self.built, **kw)
        self.addCleanup(h.destroy)
        return h

    def created(self, **kw):
        h = self.host(**kw)
        r, msg = h.create()
        self.assertEqual(r, 0, msg)
        return h

    def test_descriptor(self):
        h = self.host()
        self.assertEqual(h.desc.kind, 5)  # SOVMESH_KIND_NOISE
        self.assertEqual(h.desc.name, b"signrr")
        self.assertEqual(h.desc.ops.contents.size, ctypes.sizeof(NoiseOps))

    def test_cost_is_epsilon_zero_delta_family_other(self):
        h = self.created()
        r, cost, msg = h.cost(h.params(epsilon=0.75, clip=3.0, delta=1e-5))
        self.assertEqual(r, 0, msg)
        self.assertEqual((cost.epsilon, cost.delta, cost.family), (0.75, 0.0, FAMILY_OTHER))
        self.assertEqual(cost.size, ctypes.sizeof(PrivacyCost))  # never changed

    def test_cost_refuses_unusable_params(self):
        h = self.created()
        for kw, word in ((dict(epsilon=0.0), "epsilon"), (dict(epsilon=-1.0), "epsilon"),
                         (dict(epsilon=math.inf), "epsilon"), (dict(clip=0.0), "clip"),
                         (dict(clip=math.nan), "clip"), (dict(delta=-0.1), "delta")):
            r, _, msg = h.cost(h.params(**kw))
            self.assertEqual(r, -EINVAL, kw)
            self.assertIn(word, msg)

    def test_perturb_fills_the_same_cost(self):
        h = self.created()
        r, after, cost, msg = h.perturb([0.5, -0.5, 2.0], h.params(epsilon=1.25, clip=1.0))
        self.assertEqual(r, 0, msg)
        self.assertEqual((cost.epsilon, cost.delta, cost.family), (1.25, 0.0, FAMILY_OTHER))
        self.assertTrue(all(abs(v) == 1.0 / 3 for v in after), after)

    def test_coin_is_an_exact_integer_comparison(self):
        # A sign is kept iff the random word u < T.  For a tiny e' T is
        # clamped to 2^63 (p_hat = 1/2 exactly); for e' = 100 q rounds to
        # 1.0 and T = (1 - 2^-40) 2^64 = 2^64 - 2^24: the margin at work.
        cases = ((1e-20, 1 << 63), (100.0, (1 << 64) - (1 << 24)))
        for eps_value, t in cases:
            h = self.created(words=[t - 1, t, 0, (1 << 64) - 1])
            r, after, _, msg = h.perturb([1.0, 1.0, -1.0, -1.0],
                                         h.params(epsilon=eps_value * 4, clip=4.0))
            self.assertEqual(r, 0, msg)
            self.assertEqual(after, [1.0, -1.0, -1.0, 1.0], eps_value)

    def test_perturb_refuses_non_finite_and_leaves_the_set_alone(self):
        h = self.created()
        values = [1.0, -2.0, math.nan, 4.0]
        r, after, _, msg = h.perturb(values, h.params())
        self.assertEqual(r, -EINVAL)
        self.assertIn("'t' element 2 is NaN", msg)
        self.assertEqual(after[:2] + after[3:], [1.0, -2.0, 4.0])

    def test_perturb_refuses_other_dtypes(self):
        h = self.created()
        r, _, _, msg = h.perturb([1.0, 2.0], h.params(), dtype=DTYPE_F16)
        self.assertEqual(r, -ENOTSUP)
        self.assertIn("F16", msg)

    def test_perturb_refuses_a_magnitude_f32_cannot_hold(self):
        h = self.created(settings={"magnitude": "linf"})
        r, after, _, msg = h.perturb([1.0, -1.0], h.params(clip=1e39), dtype=DTYPE_F32)
        self.assertEqual(r, -EINVAL)
        self.assertIn("F32", msg)
        self.assertEqual(after, [1.0, -1.0])

    def test_failing_rng_is_eio(self):
        h = self.created(rng_fails=True)
        r, _, _, msg = h.perturb([1.0, 2.0], h.params())
        self.assertEqual(r, -EIO)
        self.assertIn("random_bytes", msg)

    def test_create_refuses_a_host_without_random_bytes(self):
        h = self.host(no_rng=True)
        r, msg = h.create()
        self.assertEqual(r, -ENOTSUP)
        self.assertIn("random_bytes", msg)

    def test_perturb_logs_no_coins(self):
        # Only the format string is seen here; it must not carry anything
        # about which signs were flipped.
        h = self.created()
        r, _, _, msg = h.perturb([1.0] * 10, h.params())
        self.assertEqual(r, 0, msg)
        self.assertTrue(h.logs)
        for level, fmt in h.logs:
            self.assertEqual(level, 7)  # SOVMESH_LOG_DEBUG
            self.assertNotIn(b"flip", fmt)


if __name__ == "__main__":
    unittest.main(verbosity=2)
