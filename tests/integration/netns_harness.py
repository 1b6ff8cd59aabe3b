"""Multi-host test harness: N test hosts in network namespaces (Python 3
stdlib only; needs root, iproute2, util-linux, dbus, avahi-daemon).

Layout of one Mesh (DESIGN.md §7; docs/testing.md "Multi-host tests"):

    sovt-<pid>-br   a namespace holding the Linux bridge "br0"
    sovt-<pid>-h<i> one namespace per test host; its veth "sovh<i>" is joined
                    to the bridge by its peer "sovb<i>" (which lives in the
                    bridge namespace) and has the address 10.231.1.<10+i>/24

Every address exists only inside namespaces this module creates: nothing is
routed to or from the machine's own interfaces, which are never touched
(no link, address or route is added in the initial namespace).

Each host also has its own mount namespace, held open by a small "holder"
process started as `ip netns exec NS unshare -m sh -c 'mount tmpfs ...'`:
tmpfs is mounted over /run/dbus and /run/avahi-daemon there, so the host's
private `dbus-daemon --system` and `avahi-daemon` (allow-interfaces= its
veth only) collide neither with each other nor with the machine's own.
Every later process of the host (daemons, sovmeshd, run()) enters the
holder's network and mount namespaces with nsenter, so sovmeshd's
avahi-client finds that host's /run/dbus/system_bus_socket.

Teardown always happens (context manager, atexit, SIGTERM/SIGINT): every
process started is killed by process group, any process still inside one of
the namespaces is killed, and the namespaces are deleted. Namespaces
"sovt-<pid>-*" left by an earlier run whose pid is dead are removed when a
Mesh is created.
"""
import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sovmesh_testlib import SOURCE_ROOT, SOVMESH, SOVMESHD  # noqa: E402

OLLAMA_STANDIN = os.path.join(SOURCE_ROOT, "tests", "fixtures", "ollama_standin.py")

PREFIX = "sovt-"
SUBNET = "10.231.1"
PEER_PORT = 47470
PAIR_PORT = 47471
# Generous: CI machines are slow and busy.
DEFAULT_TIMEOUT = 30.0
_NS_RE = re.compile(r"^sovt-(\d+)-(br|h\d+)$")

REQUIRED_TOOLS = ("ip", "unshare", "nsenter", "dbus-daemon", "avahi-daemon", "dbus-send")


class HarnessError(RuntimeError):
    """Setting up or driving the test network failed (one clear line)."""


def unavailable_reason():
    """Why the harness cannot run here, or None if it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "multi-host tests need root (ip netns add, mount); CI runs them as root"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return "multi-host tests need %s (packages iproute2, util-linux, dbus, avahi-daemon)" \
            % ", ".join(missing)
    if not os.access(SOVMESHD, os.X_OK):
        return "sovmeshd not built at %s (set SOVMESH_BUILD_ROOT)" % SOVMESHD
    return None


def skip_unless_available():
    """unittest decorator: skip with a clear reason when the harness can't run."""
    reason = unavailable_reason()
    return unittest.skipIf(reason is not None, reason or "")


def _sh(args, timeout=30, check=True):
    """Run a setup command in the initial namespace; raise HarnessError."""
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise HarnessError("%s: command not found" % args[0]) from None
    except subprocess.TimeoutExpired:
        raise HarnessError("%s: timed out after %ss" % (" ".join(args), timeout)) from None
    if check and r.returncode != 0:
        err = (r.stderr or r.stdout).strip().replace("\n", " | ")
        hint = ""
        if os.geteuid() != 0:
            hint = " (this needs root)"
        raise HarnessError("`%s` failed (exit %d): %s%s" % (" ".join(args), r.returncode, err,
                                                           hint))
    return r


def list_namespaces():
    """Names of all named network namespaces (`ip netns list`)."""
    r = _sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def namespace_pids(ns):
    """PIDs of processes whose network namespace is `ns`."""
    r = _sh(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids(pids, sig=signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _delete_namespace(ns, deadline=5.0):
    """Kill every process inside `ns`, then delete it."""
    end = time.monotonic() + deadline
    while True:
        pids = [p for p in namespace_pids(ns) if p != os.getpid()]
        if not pids:
            break
        _kill_pids(pids)
        if time.monotonic() > end:
            break
        time.sleep(0.05)
    _sh(["ip", "netns", "del", ns], check=False)


_DIR_RE = re.compile(r"^sovmesh-netns-(\d+)-")


def cleanup_stale(all_runs=False):
    """Delete "sovt-<pid>-*" namespaces whose creating pid is dead (or every
    one of them with all_runs=True), and that run's temporary directory
    $TMPDIR/sovmesh-netns-<pid>-*. Returns the namespace names deleted."""
    gone = []
    tmp = tempfile.gettempdir()
    for d in os.listdir(tmp):
        m = _DIR_RE.match(d)
        if m and int(m.group(1)) != os.getpid() and \
                (all_runs or not _pid_alive(int(m.group(1)))):
            shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)
    for ns in list_namespaces():
        m = _NS_RE.match(ns)
        if not m:
            continue
        pid = int(m.group(1))
        if all_runs or (pid != os.getpid() and not _pid_alive(pid)):
            _delete_namespace(ns)
            gone.append(ns)
    return gone


def wait_for(condition, timeout=DEFAULT_TIMEOUT, what="condition", interval=0.1,
             describe=None):
    """Poll condition() until it returns a true value; return that value.

    On timeout raise AssertionError "timed out after Ns waiting for WHAT",
    with the last exception condition() raised and describe()'s text (e.g.
    logs) if given."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = condition()
            if value:
                return value
            last_exc = None
        except Exception as e:  # condition may fail while things start up
            last_exc = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    msg = "timed out after %.0fs waiting for %s" % (timeout, what)
    if last_exc is not None:
        msg += " (last error: %s: %s)" % (type(last_exc).__name__, last_exc)
    if describe is not None:
        try:
            msg += "\n" + describe()
        except Exception as e:
            msg += "\n(describe failed: %s)" % e
    raise AssertionError(msg)


_CLONE_NEWNET = 0x40000000
_libc = None


def socket_in_netns(ns, family=socket.AF_INET, type=socket.SOCK_STREAM):
    """A socket created inside the named network namespace `ns` (it keeps
    living there), while this process stays where it is: only the calling
    thread visits `ns`, with setns(2), and comes straight back."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open("/run/netns/" + ns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        os.close(own)
        raise HarnessError("network namespace %s: %s" % (ns, e.strerror)) from None
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise HarnessError("setns(%s): %s" % (ns, os.strerror(err)))
        try:
            return socket.socket(family, type)
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:
                # This thread would go on in the wrong namespace: stop here.
                err = ctypes.get_errno()
                os.write(2, b"netns_harness: cannot return to own network namespace\n")
                os._exit(70 if err else 71)
    finally:
        os.close(target)
        os.close(own)


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


class _Proc:
    """A process started by the harness, in its own process group."""

    def __init__(self, name, argv, log_path, env=None, stdin=subprocess.DEVNULL):
        self.name = name
        self.log_path = log_path
        self.log_file = open(log_path, "a")
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def send(self, sig):
        """Send `sig` to the process group (a no-op once it has exited)."""
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig=signal.SIGTERM, timeout=DEFAULT_TIMEOUT):
        """Signal, wait (SIGKILL after `timeout`); return the exit status."""
        self.send(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.proc.wait()
        # Whatever the leader left behind in its group goes too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self.log_file.closed:
            self.log_file.close()
        return self.proc.returncode

    def log(self):
        return _read(self.log_path)


# Meshes not yet torn down; atexit and the signal handlers tear them down.
_LIVE = set()
_HANDLERS_INSTALLED = False


def _teardown_all():
    for mesh in list(_LIVE):
        mesh.teardown()


atexit.register(_teardown_all)


def _install_signal_handlers():
    """Once per process: SIGTERM/SIGINT tear every live Mesh down, then do
    what the previous handler (or the default action) would have done."""
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    _HANDLERS_INSTALLED = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)

        def handler(signum, frame, prev=prev):
            _teardown_all()
            if callable(prev):
                prev(signum, frame)
            elif prev == signal.SIG_IGN:
                return
            elif signum == signal.SIGINT:
                raise KeyboardInterrupt
            else:
                # SIGTERM's default action: die of it, so the exit status says so.
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
        signal.signal(sig, handler)


class Host:
    """One test host: its namespaces, addresses, files and processes."""

    def __init__(self, mesh, index):
        self.mesh = mesh
        self.index = index
        self.name = "h%d" % index
        self.ns = "%s%d-h%d" % (PREFIX, mesh.pid, index)
        self.ifname = "sovh%d" % index      # inside the host namespace
        self.br_ifname = "sovb%d" % index   # inside the bridge namespace
        self.ip = "%s.%d" % (SUBNET, 10 + index)
        self.dir = os.path.join(mesh.dir, self.name)
        self.state_dir = os.path.join(self.dir, "state")
        self.sock = os.path.join(self.state_dir, "control.sock")
        self.conf = os.path.join(self.dir, "sovmeshd.conf")
        self.avahi_conf = os.path.join(self.dir, "avahi-daemon.conf")
        self.peer_port = PEER_PORT
        self.pair_port = PAIR_PORT
        self.holder = None
        self.dbus = None
        self.avahi = None
        self.sovmeshd = None
        self.ballast = None  # shape_link(backlog=True)
        self.extra_procs = []
        os.makedirs(self.dir, exist_ok=True)

    @property
    def root(self):
        """This host's filesystem view (its mount namespace) from outside."""
        return "/proc/%d/root" % self.holder.pid

    def peer_addr(self):
        return "%s:%d" % (self.ip, self.peer_port)

    def pair_addr(self):
        return "%s:%d" % (self.ip, self.pair_port)

    def enter(self, argv):
        """argv prefixed to run inside this host's network + mount namespaces."""
        if self.holder is None or not self.holder.alive():
            raise HarnessError("host %s has no namespace holder (not set up or torn down)"
                               % self.name)
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "--"] + list(argv)


class Mesh:
    """N test hosts on one bridge. Use as a context manager:

        with Mesh(3) as mesh:
            mesh.start_host(1)
            mesh.cli_json(1, "id")

    Hosts are numbered from 1. Creating a Mesh builds the network and starts
    dbus-daemon + avahi-daemon on every host (avahi=False: not started);
    sovmeshd is started per host by start_host()."""

    def __init__(self, n_hosts, avahi=True, keep_dir=False, timeout=DEFAULT_TIMEOUT):
        reason = unavailable_reason()
        if reason:
            raise HarnessError(reason)
        if n_hosts < 1 or n_hosts > 200:
            raise HarnessError("Mesh(%d): between 1 and 200 hosts" % n_hosts)
        self.pid = os.getpid()
        self.timeout = timeout
        self.keep_dir = keep_dir
        self._lock = threading.RLock()
        self._torn_down = False
        self._namespaces = []
        self.dir = tempfile.mkdtemp(prefix="sovmesh-netns-%d-" % self.pid)
        os.chmod(self.dir, 0o755)
        self.bridge_ns = "%s%d-br" % (PREFIX, self.pid)
        self.hosts = {}
        self._install_teardown_hooks()
        try:
            cleanup_stale()
            for ns in [self.bridge_ns] + ["%s%d-h%d" % (PREFIX, self.pid, i)
                                          for i in range(1, n_hosts + 1)]:
                if ns in list_namespaces():
                    if _LIVE - {self}:
                        raise HarnessError("namespace %s already exists: another Mesh of "
                                           "this process is still up (tear it down first)"
                                           % ns)
                    # Left by a dead run whose pid was reused by this one.
                    _delete_namespace(ns)
            self._make_bridge()
            for i in range(1, n_hosts + 1):
                self.hosts[i] = Host(self, i)
                self._make_host(self.hosts[i])
            for h in self.hosts.values():
                self._start_dbus(h)
            if avahi:
                for h in self.hosts.values():
                    self._spawn_avahi(h)
                for h in self.hosts.values():
                    self._wait_avahi(h)
        except BaseException:
            self.teardown()
            raise

    # ---- context manager and teardown hooks ----

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False

    def _install_teardown_hooks(self):
        _LIVE.add(self)
        _install_signal_handlers()

    def teardown(self):
        """Kill every process started, delete every namespace; idempotent."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        procs = []
        for h in self.hosts.values():
            procs += list(h.extra_procs) + [h.sovmeshd, h.avahi, h.dbus, h.holder]
        for p in procs:
            if p is not None:
                p.send(signal.SIGKILL)
        for p in procs:
            if p is not None:
                p.stop(signal.SIGKILL, timeout=10)
        for ns in reversed(self._namespaces):
            _delete_namespace(ns)
        self._namespaces = []
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)

    @property
    def namespaces(self):
        """Names of the namespaces this Mesh created and has not deleted."""
        return list(self._namespaces)

    def _check_up(self):
        if self._torn_down:
            raise HarnessError("this Mesh has been torn down")

    # ---- network ----

    def _add_ns(self, ns):
        _sh(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _make_bridge(self):
        ns = self.bridge_ns
        self._add_ns(ns)
        _sh(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        _sh(["ip", "-n", ns, "link", "set", "br0", "up"])

    def _make_host(self, h):
        self._add_ns(h.ns)
        # The veth pair is created inside the bridge namespace and one end is
        # moved straight into the host namespace: no interface ever exists in
        # the machine's own namespace, so nothing there can collide or leak.
        _sh(["ip", "-n", self.bridge_ns, "link", "add", h.br_ifname, "type", "veth",
             "peer", "name", h.ifname, "netns", h.ns])
        _sh(["ip", "-n", self.bridge_ns, "link", "set", h.br_ifname, "master", "br0"])
        _sh(["ip", "-n", self.bridge_ns, "link", "set", h.br_ifname, "up"])
        _sh(["ip", "-n", h.ns, "addr", "add", h.ip + "/24", "dev", h.ifname])
        _sh(["ip", "-n", h.ns, "link", "set", h.ifname, "up"])
        # Mount namespace holder: mounts first, then it waits on stdin, so it
        # also ends if this Python process dies without tearing down.
        script = ("set -e; mkdir -p /run/dbus /run/avahi-daemon; "
                  "mount -t tmpfs -o mode=0755 sovt-dbus /run/dbus; "
                  "mount -t tmpfs -o mode=0755 sovt-avahi /run/avahi-daemon; "
                  "echo ready; exec cat >/dev/null")
        h.holder = _Proc("holder", ["ip", "netns", "exec", h.ns, "unshare", "-m",
                                    "--propagation", "private", "sh", "-c", script],
                         os.path.join(h.dir, "holder.log"), stdin=subprocess.PIPE)

        def mounted():
            if not h.holder.alive():
                raise HarnessError("namespace holder of %s exited: %s"
                                   % (h.name, h.holder.log().strip()))
            return "ready" in h.holder.log() and os.path.ismount(h.root + "/run/dbus") \
                and os.path.ismount(h.root + "/run/avahi-daemon")
        self._wait_setup(mounted, "the mount namespace of %s" % h.name)

    def _wait_setup(self, cond, what):
        try:
            wait_for(cond, self.timeout, what, interval=0.05)
        except AssertionError as e:
            raise HarnessError(str(e).splitlines()[0]) from None

    def change_address(self, i, new_ip):
        """Replace host i's address with `new_ip` (in 10.231.1.0/24).

        sovmeshd keeps running; if it listens on the old address, restart it
        (stop_host + start_host) to listen on the new one."""
        self._check_up()
        h = self.hosts[i]
        if not re.match(r"^10\.231\.1\.(\d+)$", new_ip) or \
                not 1 <= int(new_ip.rsplit(".", 1)[1]) <= 254:
            raise HarnessError("change_address(%d, %r): not an address in %s.0/24"
                               % (i, new_ip, SUBNET))
        # Delete first: deleting a primary address also deletes the
        # secondaries of its subnet, so add-then-delete would lose both.
        _sh(["ip", "-n", h.ns, "addr", "del", h.ip + "/24", "dev", h.ifname])
        h.ip = None
        _sh(["ip", "-n", h.ns, "addr", "add", new_ip + "/24", "dev", h.ifname])
        h.ip = new_ip

    def set_link(self, i, up):
        """Unplug (up=False) or replug host i's cable: its bridge-side veth
        goes down, so the host vanishes without sending any goodbye."""
        self._check_up()
        h = self.hosts[i]
        _sh(["ip", "-n", self.bridge_ns, "link", "set", h.br_ifname, "up" if up else "down"])

    # ---- dbus-daemon and avahi-daemon ----

    def _start_dbus(self, h):
        h.dbus = _Proc("dbus-daemon", h.enter(
            ["dbus-daemon", "--system", "--nofork", "--nopidfile", "--nosyslog"]),
            os.path.join(h.dir, "dbus.log"))
        sock = h.root + "/run/dbus/system_bus_socket"

        def up():
            if not h.dbus.alive():
                raise HarnessError("dbus-daemon of %s exited: %s"
                                   % (h.name, h.dbus.log().strip().replace("\n", " | ")))
            return os.path.exists(sock)
        self._wait_setup(up, "dbus-daemon of %s" % h.name)

    def _write_avahi_conf(self, h):
        with open(h.avahi_conf, "w") as f:
            f.write("""# written by tests/integration/netns_harness.py
[server]
host-name=sovt%d-%s
use-ipv4=yes
use-ipv6=no
allow-interfaces=%s
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000

[wide-area]
enable-wide-area=no

[publish]
publish-hinfo=no
publish-workstation=no
publish-addresses=yes
publish-aaaa-on-ipv4=no
publish-a-on-ipv6=no

[reflector]
enable-reflector=no
""" % (self.pid, h.name, h.ifname))

    def _spawn_avahi(self, h):
        self._write_avahi_conf(h)
        # Stale pid file from a killed instance would make avahi refuse.
        try:
            os.unlink(h.root + "/run/avahi-daemon/pid")
        except FileNotFoundError:
            pass
        h.avahi = _Proc("avahi-daemon", h.enter(
            ["avahi-daemon", "--no-drop-root", "--no-chroot", "--no-rlimits",
             "--no-proc-title", "--file=" + h.avahi_conf]),
            os.path.join(h.dir, "avahi.log"))

    def avahi_state(self, i):
        """Avahi server state over D-Bus (2 = running), or None."""
        r = self.run(i, ["dbus-send", "--system", "--print-reply", "--reply-timeout=2000",
                         "--dest=org.freedesktop.Avahi", "/",
                         "org.freedesktop.Avahi.Server.GetState"], timeout=10)
        m = re.search(r"int32 (-?\d+)", r.stdout)
        return int(m.group(1)) if r.returncode == 0 and m else None

    def _wait_avahi(self, h):
        def running():
            if not h.avahi.alive():
                raise HarnessError("avahi-daemon of %s exited: %s"
                                   % (h.name, h.avahi.log().strip().replace("\n", " | ")))
            return self.avahi_state(h.index) == 2
        self._wait_setup(running, "avahi-daemon of %s to be running" % h.name)

    def start_avahi(self, i, wait=True):
        """(Re)start host i's avahi-daemon; wait until it is running."""
        self._check_up()
        h = self.hosts[i]
        if h.avahi is not None and h.avahi.alive():
            raise HarnessError("avahi-daemon of %s is already running" % h.name)
        self._spawn_avahi(h)
        if wait:
            self._wait_avahi(h)

    def kill_avahi(self, i, sig=signal.SIGKILL):
        """Kill host i's avahi-daemon (default SIGKILL: no goodbyes sent)."""
        self._check_up()
        h = self.hosts[i]
        if h.avahi is None:
            return None
        code = h.avahi.stop(sig, timeout=10)
        return code

    def avahi_running(self, i):
        h = self.hosts[i]
        return h.avahi is not None and h.avahi.alive()

    # ---- sovmeshd ----

    def write_config(self, i, config_extra="", mesh_extra="", pairing_extra="",
                     node_extra="", listen_ip=None, fl=None):
        """Write host i's sovmeshd config. The *_extra strings go inside the
        node/mesh/pairing groups; config_extra is appended at top level (it
        must not repeat those groups). `fl` is the body of the
        federated_learning group (default: off)."""
        h = self.hosts[i]
        ip = listen_ip or h.ip
        with open(h.conf, "w") as f:
            f.write("""# written by tests/integration/netns_harness.py
node = { name = "%s"; state_dir = "%s"; log_level = "debug"; %s };
mesh = { peer_listen = "%s:%d"; %s };
pairing = { listen = "%s:%d"; %s };
federated_learning = { %s };
%s
""" % (h.name, h.state_dir, node_extra, ip, h.peer_port, mesh_extra,
                ip, h.pair_port, pairing_extra,
                "enabled = false;" if fl is None else fl, config_extra))
        return h.conf

    def start_host(self, i, config_extra="", mesh_extra="", pairing_extra="",
                   node_extra="", listen_ip=None, wait=True, args=(), fl=None, env_extra=None):
        """Start sovmeshd on host i (its own state dir, config and log).

        peer_listen / pairing.listen are host i's address (listen_ip, e.g.
        "0.0.0.0", overrides). Waits until the control socket answers unless
        wait=False. Returns the Host."""
        self._check_up()
        h = self.hosts[i]
        if h.sovmeshd is not None and h.sovmeshd.alive():
            raise HarnessError("sovmeshd of %s is already running" % h.name)
        os.makedirs(h.state_dir, mode=0o700, exist_ok=True)
        self.write_config(i, config_extra, mesh_extra, pairing_extra, node_extra, listen_ip, fl)
        env = dict(os.environ)
        env.pop("SOVMESH_PLUGIN_PATH", None)
        env.update(env_extra or {})
        log_path = os.path.join(h.dir, "sovmeshd.log")
        with open(log_path, "a") as f:
            f.write("==== harness: sovmeshd start at %.3f ====\n" % time.time())
        h.sovmeshd = _Proc("sovmeshd", h.enter([SOVMESHD, "-c", h.conf] + list(args)),
                           log_path, env=env)
        if wait:
            self.wait_for_control(i)
        return h

    def wait_for_control(self, i, timeout=None):
        """Wait until host i's sovmeshd answers `sovmesh id`."""
        h = self.hosts[i]

        def answers():
            if not h.sovmeshd.alive():
                raise AssertionError("sovmeshd of %s exited with %s:\n%s"
                                     % (h.name, h.sovmeshd.proc.returncode, self.log(i)))
            return os.path.exists(h.sock) and self.cli(i, "id", timeout=10).returncode == 0
        try:
            wait_for(answers, timeout or self.timeout,
                     "sovmeshd of %s to answer on %s" % (h.name, h.sock))
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, self.log(i))) from None

    def stop_host(self, i, sig=signal.SIGTERM, timeout=None):
        """Stop host i's sovmeshd with `sig` (SIGKILL: a crash); return its
        exit status (negative: killed by that signal). avahi stays up."""
        self._check_up()
        h = self.hosts[i]
        if h.sovmeshd is None:
            return None
        code = h.sovmeshd.stop(sig, timeout=timeout or self.timeout)
        return code

    def sovmeshd_running(self, i):
        h = self.hosts[i]
        return h.sovmeshd is not None and h.sovmeshd.alive()

    def log(self, i):
        """Everything host i's sovmeshd has logged (all starts)."""
        return _read(os.path.join(self.hosts[i].dir, "sovmeshd.log"))

    def avahi_log(self, i):
        h = self.hosts[i]
        return h.avahi.log() if h.avahi else ""

    def logs(self):
        """All hosts' sovmeshd logs, for failure messages."""
        return "\n".join("---- %s sovmeshd.log ----\n%s" % (h.name, self.log(i))
                         for i, h in sorted(self.hosts.items()))

    # ---- commands on a host ----

    def run(self, i, argv, timeout=60, input=None, env=None):
        """Run argv inside host i's network and mount namespaces; return a
        CompletedProcess with text stdout/stderr (never raises on exit)."""
        self._check_up()
        full_env = dict(os.environ)
        full_env.pop("SOVMESH_PLUGIN_PATH", None)
        if env:
            full_env.update(env)
        try:
            return subprocess.run(self.hosts[i].enter(argv), capture_output=True, text=True,
                                  timeout=timeout, input=input, env=full_env,
                                  start_new_session=True)
        except subprocess.TimeoutExpired as e:
            raise AssertionError("on %s: `%s` timed out after %ss" % (
                self.hosts[i].name, " ".join(argv), timeout)) from e

    def spawn(self, i, argv, name="proc"):
        """Start a long-running argv inside host i (killed at teardown or by
        its .stop()); output goes to <host dir>/<name>.log."""
        self._check_up()
        h = self.hosts[i]
        p = _Proc(name, h.enter(argv), os.path.join(h.dir, "%s.log" % name))
        h.extra_procs.append(p)
        return p

    def cli(self, i, *args, timeout=90):
        """The sovmesh CLI against host i's control socket, run inside host i."""
        return self.run(i, [SOVMESH, "--socket", self.hosts[i].sock] + list(args),
                        timeout=timeout)

    def cli_json(self, i, *args, timeout=90):
        r = self.cli(i, "--json", *args, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError("on %s: sovmesh --json %s failed (exit %d): %s\n%s" % (
                self.hosts[i].name, " ".join(args), r.returncode, r.stderr.strip(),
                self.log(i)))
        return json.loads(r.stdout)

    def wait_for(self, condition, timeout=None, what="condition"):
        """wait_for() with every host's sovmeshd log in the failure message."""
        return wait_for(condition, timeout or self.timeout, what, describe=self.logs)

    def connect(self, i, ip, port, timeout=10.0):
        """A TCP socket connected from inside host i to ip:port (e.g. the
        host's own loopback, where its sovmeshd's front door and its
        stand-in listen), usable from this process; raises OSError."""
        self._check_up()
        s = socket_in_netns(self.hosts[i].ns, socket.AF_INET6 if ":" in ip
                            else socket.AF_INET)
        try:
            s.settimeout(timeout)
            s.connect((ip, port))
        except BaseException:
            s.close()
            raise
        return s

    def start_standin(self, i, args=(), listen="127.0.0.1:11434", name="ollama-standin"):
        """Start tests/fixtures/ollama_standin.py inside host i (listening on
        `listen` there, default Ollama's port on the host's loopback); wait
        for its "LISTENING" line. Returns the process (stop() it, or
        teardown does)."""
        self._check_up()
        h = self.hosts[i]
        log_path = os.path.join(h.dir, "%s.log" % name)
        start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        p = self.spawn(i, [sys.executable, OLLAMA_STANDIN, "--listen", listen] + list(args),
                       name=name)

        def listening():
            if not p.alive():
                raise HarnessError("%s on %s exited: %s" % (name, h.name, p.log()[start:]))
            return "LISTENING " in _read(log_path)[start:]
        self._wait_setup(listening, "%s on %s to listen on %s" % (name, h.name, listen))
        return p

    def shape_link(self, i, rate="64kbit", burst="1600", latency="2s", backlog=True):
        """Slow host i's outgoing traffic down: a tbf qdisc as the root of
        its veth (inside its namespace). Raises HarnessError, naming the
        cause, when tbf cannot be added (e.g. the kernel lacks sch_tbf).

        tbf alone delays nothing that stays under `rate`: a sparse exchange
        (a health check) always finds tokens in the bucket. With backlog=True
        a "ballast" process in host i also keeps a few 1000-byte UDP
        datagrams (to the subnet's broadcast address, discard port) queued
        in the qdisc, so every packet leaving waits behind them (about
        0.5 s at 64kbit). Its small socket buffer holds the sender back, so
        the queue never overflows and nothing else is dropped."""
        self._check_up()
        h = self.hosts[i]
        _sh(["ip", "netns", "exec", h.ns, "tc", "qdisc", "replace", "dev", h.ifname, "root",
             "tbf", "rate", rate, "burst", burst, "latency", latency])
        if backlog and not (h.ballast is not None and h.ballast.alive()):
            code = ("import socket\n"
                    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
                    "s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)\n"
                    "while True:\n"
                    "    s.sendto(b'b' * 1000, (%r, 9))\n") % (SUBNET + ".255")
            h.ballast = self.spawn(i, [sys.executable, "-c", code], name="ballast")

    def unshape_link(self, i):
        """Undo shape_link(): stop the ballast, remove the tbf qdisc (a
        no-op when neither is there)."""
        self._check_up()
        h = self.hosts[i]
        if h.ballast is not None:
            h.ballast.stop(signal.SIGKILL, timeout=10)
            h.ballast = None
        r = _sh(["ip", "netns", "exec", h.ns, "tc", "qdisc", "show", "dev", h.ifname],
                check=False)
        if "qdisc tbf " in r.stdout:
            _sh(["ip", "netns", "exec", h.ns, "tc", "qdisc", "del", "dev", h.ifname, "root"])

    def tcp_connect(self, i, ip, port, timeout=5):
        """From inside host i: can a TCP connection to ip:port be opened?
        Returns "open", "refused" or "unreachable" (no answer at all)."""
        code = ("import socket,sys\n"
                "s=socket.socket(); s.settimeout(%r)\n"
                "try:\n s.connect((%r,%d)); print('open')\n"
                "except ConnectionRefusedError: print('refused')\n"
                "except OSError: print('unreachable')\n") % (float(timeout), ip, port)
        r = self.run(i, [sys.executable, "-c", code], timeout=timeout + 30)
        return r.stdout.strip()
