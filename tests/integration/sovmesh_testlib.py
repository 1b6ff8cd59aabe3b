"""Shared helpers for sovmesh integration tests (Python 3 stdlib only).

Tests run real binaries from the meson build tree named by
$SOVMESH_BUILD_ROOT; each test gets its own temporary state directory and
control socket, and stops every daemon it started, even on failure.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest

BUILD_ROOT = os.environ.get("SOVMESH_BUILD_ROOT", os.path.abspath("build"))
SOURCE_ROOT = os.environ.get(
    "SOVMESH_SOURCE_ROOT",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
SOVMESHD = os.path.join(BUILD_ROOT, "core", "sovmeshd")
SOVMESH = os.path.join(BUILD_ROOT, "core", "sovmesh")
PLUGIN_DIR = os.path.join(BUILD_ROOT, "plugins")
TEST_PLUGIN_DIR = os.path.join(BUILD_ROOT, "tests", "plugins")

# Generous: CI machines are slow and busy.
START_TIMEOUT = 30.0


# Daemons started outside the multi-host harness must never announce on
# the machine's real network: point avahi-client at a bus that is not there.
NO_SYSTEM_BUS = {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/sovmesh-test-bus"}


def run(args, env=None, timeout=60, check=False):
    """Run a command; return CompletedProcess with text stdout/stderr."""
    full_env = dict(os.environ)
    full_env.pop("SOVMESH_PLUGIN_PATH", None)
    full_env.update(NO_SYSTEM_BUS)
    if env:
        full_env.update(env)
    return subprocess.run(args, env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=check)


def write_config(path, state_dir, extra="", fl=True, plugin_path=None):
    """Write a config with its own state dir; `extra` is appended verbatim."""
    plugin_path = plugin_path or []
    # Loopback, any free port: tests never collide or leave the machine.
    # (A test that brings its own mesh group sets peer_listen itself if it
    # starts a daemon with that file.)
    if "mesh = {" not in extra:
        extra = 'mesh = { peer_listen = "127.0.0.1:0"; };\n' + extra
    # The front door too (its default 11435 would collide between daemons).
    if "api = {" not in extra:
        extra = 'api = { listen = "127.0.0.1:0"; };\n' + extra
    text = """
node = {
  name = "test-node";
  state_dir = "%s";
  log_level = "info";
  plugin_path = [%s];
};
pairing = { listen = "127.0.0.1:0"; };
federated_learning = {
  enabled = %s;
};
%s
""" % (state_dir, ", ".join('"%s"' % p for p in plugin_path),
       "true" if fl else "false", extra)
    with open(path, "w") as f:
        f.write(text)
    return path


class Daemon:
    """A sovmeshd process with its stderr collected in a file."""

    def __init__(self, args, env=None, log_path=None):
        self.args = args
        self.env = dict(os.environ)
        self.env.pop("SOVMESH_PLUGIN_PATH", None)
        self.env.update(NO_SYSTEM_BUS)
        if env:
            self.env.update(env)
        self.log_path = log_path or tempfile.mktemp(prefix="sovmeshd-", suffix=".log")
        self.log_file = open(self.log_path, "w+")
        self.proc = subprocess.Popen([SOVMESHD] + args, env=self.env,
                                     stdout=self.log_file, stderr=subprocess.STDOUT)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_for_log(self, text, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                return text in self.log()
            time.sleep(0.05)
        return False

    def wait_for_socket(self, path, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("sovmeshd exited with %s:\n%s"
                                     % (self.proc.returncode, self.log()))
            if os.path.exists(path):
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(path)
                    return
                except OSError:
                    pass
                finally:
                    s.close()
            time.sleep(0.05)
        raise AssertionError("control socket %s never appeared:\n%s" % (path, self.log()))

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=START_TIMEOUT):
        """Stop with `sig`; return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("sovmeshd did not stop on %s:\n%s" % (sig, self.log()))
        self.log_file.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log_file.closed:
            self.log_file.close()


class DaemonTestCase(unittest.TestCase):
    """Gives each test a temp dir and stops leftover daemons."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="sovmesh-test-")
        self.dir = self.tmp.name
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.kill()
        self.tmp.cleanup()

    def start(self, args, env=None):
        d = Daemon(args, env=env, log_path=os.path.join(self.dir, "daemon-%d.log"
                                                        % len(self.daemons)))
        self.daemons.append(d)
        return d


# ---- safetensors, written and read independently of the C code ----

def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (dtype, shape, list_of_values)}; F32/F64 only here."""
    fmt = {"F32": "<f", "F64": "<d"}
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        blob = b"".join(struct.pack(fmt[dtype], v) for v in values)
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    """Return {name: (dtype, shape, values)} for F32/F64/F16/BF16 files."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = body[b:e]
        dt = info["dtype"]
        if dt == "F32":
            vals = list(struct.unpack("<%df" % (len(raw) // 4), raw))
        elif dt == "F64":
            vals = list(struct.unpack("<%dd" % (len(raw) // 8), raw))
        elif dt == "F16":
            vals = list(struct.unpack("<%de" % (len(raw) // 2), raw))
        elif dt == "BF16":
            vals = [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0]
                    for i in range(0, len(raw), 2)]
        else:
            raise ValueError("dtype %s" % dt)
        out[name] = (dt, info["shape"], vals)
    return out
