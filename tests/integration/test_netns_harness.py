"""Self-tests of the multi-host harness (netns_harness.py): namespaces,
bridge, per-host dbus-daemon + avahi-daemon + sovmeshd, and teardown that
leaves nothing behind. They do not depend on discovery in sovmeshd.

Needs root (skipped otherwise, with the reason); CI runs as root."""
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns_harness as nh  # noqa: E402
from netns_harness import Mesh, skip_unless_available, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HAVE_AVAHI_UTILS = shutil.which("avahi-browse") is not None and \
    shutil.which("avahi-publish-service") is not None


def pid_gone(pid):
    """True once `pid` no longer exists (or is a zombie about to be reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def root_interfaces():
    return set(os.listdir("/sys/class/net"))


def harness_mounts():
    """tmpfs mounts made by the harness, as seen from this (root) namespace."""
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " sovt-dbus " in line or " sovt-avahi " in line]


@skip_unless_available()
class MeshTest(unittest.TestCase):
    """One 3-host mesh shared by these tests (each restores what it changes)."""

    @classmethod
    def setUpClass(cls):
        cls.root_ifaces = root_interfaces()
        cls.mesh = Mesh(3)
        try:
            for i in (1, 2, 3):
                cls.mesh.start_host(i)
        except BaseException:
            cls.mesh.teardown()
            raise

    @classmethod
    def tearDownClass(cls):
        m = cls.mesh
        procs = [p.pid for h in m.hosts.values()
                 for p in [h.holder, h.dbus, h.avahi, h.sovmeshd] + h.extra_procs if p]
        names = m.namespaces
        m.teardown()
        left = set(names) & set(nh.list_namespaces())
        assert not left, "namespaces left after teardown: %s" % left
        wait_for(lambda: all(pid_gone(p) for p in procs), 10, "harness processes to be gone")
        assert not os.path.exists(m.dir), m.dir

    def test_layout_and_isolation(self):
        m = self.mesh
        self.assertEqual(len(m.namespaces), 4)
        for i, h in m.hosts.items():
            self.assertEqual(h.ns, "sovt-%d-h%d" % (os.getpid(), i))
            # Inside a host: loopback and its own veth, nothing else.
            r = m.run(i, ["ip", "-o", "link", "show"])
            self.assertEqual(r.returncode, 0, r.stderr)
            names = sorted(re.findall(r"^\d+: ([^:@]+)", r.stdout, re.M))
            self.assertEqual(names, ["lo", h.ifname])
            r = m.run(i, ["ip", "-o", "-4", "addr", "show", "dev", h.ifname])
            self.assertIn(h.ip + "/24", r.stdout)
            # Only the on-link test subnet is routed: no default route out.
            r = m.run(i, ["ip", "route", "show"])
            self.assertNotIn("default", r.stdout)
            # Its /run/dbus is the host's own tmpfs, not the machine's.
            self.assertTrue(os.path.ismount(h.root + "/run/dbus"))
            self.assertTrue(os.path.exists(h.root + "/run/dbus/system_bus_socket"))
        # The machine's own namespace gained no interface and no mount.
        self.assertEqual(root_interfaces(), self.root_ifaces)
        self.assertEqual(harness_mounts(), [])

    def test_hosts_reach_each_other_over_the_bridge(self):
        m = self.mesh
        for i in m.hosts:
            for j, other in m.hosts.items():
                if i == j:
                    continue
                # sovmeshd of j listens on its peer port; port 9 is closed:
                # "refused" proves a reply came back from j's kernel.
                self.assertEqual(m.tcp_connect(i, other.ip, other.peer_port), "open",
                                 "h%d -> h%d" % (i, j))
                self.assertEqual(m.tcp_connect(i, other.ip, 9), "refused")
        # Nothing outside the test subnet is reachable from a host.
        self.assertEqual(m.tcp_connect(1, "10.231.2.1", 9, timeout=2), "unreachable")

    def test_avahi_runs_per_host_on_its_veth_only(self):
        m = self.mesh
        for i, h in m.hosts.items():
            self.assertTrue(m.avahi_running(i))
            self.assertEqual(m.avahi_state(i), 2)
            r = m.run(i, ["dbus-send", "--system", "--print-reply",
                          "--dest=org.freedesktop.Avahi", "/",
                          "org.freedesktop.Avahi.Server.GetHostName"])
            self.assertIn("sovt%d-h%d" % (os.getpid(), i), r.stdout, r.stderr)
            log = m.avahi_log(i)
            joined = re.findall(r"Joining mDNS multicast group on interface (\S+)", log)
            self.assertEqual(joined, ["%s.IPv4" % h.ifname], log)

    @unittest.skipUnless(HAVE_AVAHI_UTILS, "avahi-utils (avahi-browse) not installed")
    def test_hosts_see_each_others_services(self):
        m = self.mesh
        pubs = [m.spawn(i, ["avahi-publish-service", "harness-test-h%d" % i,
                            "_sovtest._tcp", str(1000 + i), "host=h%d" % i],
                        name="publish") for i in m.hosts]
        try:
            for i in m.hosts:
                def resolved(i=i):
                    r = m.run(i, ["avahi-browse", "-t", "-r", "-p", "_sovtest._tcp"],
                              timeout=30)
                    got = {}
                    for line in r.stdout.splitlines():
                        f = line.split(";")
                        if f[0] == "=" and len(f) >= 10:
                            got[f[3]] = (f[7], f[8], f[9])
                    return got if len(got) == 3 else None
                got = m.wait_for(resolved, what="host %d to resolve all 3 services" % i)
                for j, h in m.hosts.items():
                    self.assertEqual(got["harness-test-h%d" % j],
                                     (h.ip, str(1000 + j), '"host=h%d"' % j))
        finally:
            for p in pubs:
                p.stop()

    def test_sovmeshd_per_host_identity(self):
        m = self.mesh
        ids = {i: m.cli_json(i, "id") for i in m.hosts}
        self.assertEqual({i: d["name"] for i, d in ids.items()}, {1: "h1", 2: "h2", 3: "h3"})
        self.assertEqual(len({d["fingerprint"] for d in ids.values()}), 3)
        for i, h in m.hosts.items():
            self.assertTrue(os.path.isdir(os.path.join(h.state_dir, "identity")))
            self.assertIn("listening on %s port %d" % (h.ip, h.peer_port), m.log(i))

    def test_kill_and_start_avahi_sovmeshd_keeps_running(self):
        m = self.mesh
        code = m.kill_avahi(2)
        self.assertEqual(code, -signal.SIGKILL)
        self.assertFalse(m.avahi_running(2))
        self.assertIsNone(m.avahi_state(2))
        time.sleep(0.5)
        self.assertTrue(m.sovmeshd_running(2), m.log(2))
        self.assertEqual(m.cli_json(2, "id")["name"], "h2")
        m.start_avahi(2)
        self.assertEqual(m.avahi_state(2), 2)
        self.assertTrue(m.sovmeshd_running(2), m.log(2))
        with self.assertRaises(nh.HarnessError):
            m.start_avahi(2)

    def test_stop_and_start_host(self):
        m = self.mesh
        fp = m.cli_json(3, "id")["fingerprint"]
        starts = m.log(3).count("==== harness: sovmeshd start")
        self.assertEqual(m.stop_host(3), 0)
        self.assertFalse(m.sovmeshd_running(3))
        self.assertNotEqual(m.cli(3, "id").returncode, 0)
        self.assertEqual(m.tcp_connect(1, m.hosts[3].ip, m.hosts[3].peer_port), "refused")
        m.start_host(3)
        self.assertEqual(m.cli_json(3, "id")["fingerprint"], fp)
        # A crash: SIGKILL, then the same state directory again.
        self.assertEqual(m.stop_host(3, signal.SIGKILL), -signal.SIGKILL)
        m.start_host(3)
        self.assertEqual(m.cli_json(3, "id")["fingerprint"], fp)
        self.assertEqual(m.log(3).count("==== harness: sovmeshd start"), starts + 2)

    def test_change_address(self):
        m = self.mesh
        h = m.hosts[3]
        old = h.ip
        with self.assertRaises(nh.HarnessError):
            m.change_address(3, "192.168.1.5")
        m.change_address(3, "10.231.1.50")
        try:
            self.assertEqual(h.ip, "10.231.1.50")
            # sovmeshd listened on the old address: restart it on the new one.
            m.stop_host(3)
            m.start_host(3)
            # (Eventually: host 1's neighbour cache may still hold the old entry.)
            m.wait_for(lambda: m.tcp_connect(1, "10.231.1.50", h.peer_port) == "open",
                       what="h3's peer port on its new address")
            self.assertEqual(m.tcp_connect(1, old, h.peer_port, timeout=2), "unreachable")
            if HAVE_AVAHI_UTILS:
                # avahi on host 3 follows: host 1 resolves its name to the new address.
                name = "sovt%d-h3.local" % os.getpid()
                m.wait_for(lambda: "10.231.1.50" in m.run(
                    1, ["avahi-resolve", "-4", "-n", name], timeout=30).stdout,
                    what="%s to resolve to 10.231.1.50 from h1" % name)
        finally:
            m.change_address(3, old)
            m.stop_host(3)
            m.start_host(3)
        m.wait_for(lambda: m.tcp_connect(1, old, h.peer_port) == "open",
                   what="h3's peer port back on %s" % old)

    def test_link_down_and_up(self):
        m = self.mesh
        m.set_link(2, False)
        try:
            self.assertEqual(m.tcp_connect(1, m.hosts[2].ip, m.hosts[2].peer_port, timeout=2),
                             "unreachable")
        finally:
            m.set_link(2, True)
        m.wait_for(lambda: m.tcp_connect(1, m.hosts[2].ip, m.hosts[2].peer_port) == "open",
                   what="h2 reachable again")


@skip_unless_available()
class TeardownTest(unittest.TestCase):

    def assert_all_gone(self, names, pids):
        left = set(names) & set(nh.list_namespaces())
        self.assertEqual(left, set(), "namespaces left behind")
        wait_for(lambda: all(pid_gone(p) for p in pids), 10,
                 "processes %s to be gone" % pids)
        self.assertEqual(harness_mounts(), [])

    def test_teardown_when_a_test_raises(self):
        names, pids = [], []
        with self.assertRaisesRegex(RuntimeError, "boom"):
            with Mesh(2) as m:
                m.start_host(1)
                m.spawn(2, ["sleep", "1000"], name="sleeper")
                # A process the harness did not start itself, detached from
                # everything: teardown finds it through its namespace.
                r = m.run(2, ["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 & echo $!"])
                stray = int(r.stdout.strip())
                names = m.namespaces
                pids = [p.pid for h in m.hosts.values()
                        for p in [h.holder, h.dbus, h.avahi, h.sovmeshd] + h.extra_procs
                        if p] + [stray]
                self.assertFalse(pid_gone(stray))
                raise RuntimeError("boom")
        self.assertEqual(len(names), 3)
        self.assert_all_gone(names, pids)
        with self.assertRaisesRegex(nh.HarnessError, "torn down"):
            m.start_host(2)
        m.teardown()  # idempotent

    def _child(self, extra=""):
        script = textwrap.dedent("""
            import os, sys, time
            sys.path.insert(0, %r)
            import netns_harness as nh
            m = nh.Mesh(1)
            m.start_host(1)
            h = m.hosts[1]
            print(" ".join(m.namespaces), flush=True)
            print(" ".join(str(p.pid) for p in (h.holder, h.dbus, h.avahi, h.sovmeshd)),
                  flush=True)
            time.sleep(300)
        """) % HERE
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            names = p.stdout.readline().split()
            pids = [int(x) for x in p.stdout.readline().split()]
        except Exception:
            p.kill()
            raise
        if len(names) != 2:
            p.kill()
            self.fail("child harness did not come up: %s" % p.stderr.read())
        return p, names, pids

    def _reap(self, p):
        p.stdout.close()
        p.stderr.close()

    def test_sigterm_tears_down(self):
        p, names, pids = self._child()
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=60), -signal.SIGTERM)
        self._reap(p)
        self.assert_all_gone(names, pids)

    def test_sigint_tears_down(self):
        p, names, pids = self._child()
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
        self._reap(p)
        self.assertNotEqual(p.returncode, 0)
        self.assert_all_gone(names, pids)

    def test_stale_namespaces_of_a_dead_run_are_removed(self):
        p, names, pids = self._child()
        p.kill()  # no chance to tear down
        p.wait()
        self._reap(p)
        self.assertTrue(set(names) <= set(nh.list_namespaces()))
        dirs = [d for d in os.listdir(nh.tempfile.gettempdir())
                if d.startswith("sovmesh-netns-%d-" % p.pid)]
        self.assertEqual(len(dirs), 1)
        gone = nh.cleanup_stale()
        self.assertTrue(set(names) <= set(gone), gone)
        self.assertFalse(os.path.exists(os.path.join(nh.tempfile.gettempdir(), dirs[0])))
        self.assert_all_gone(names, pids)


if __name__ == "__main__":
    reason = nh.unavailable_reason()
    if reason:
        # 77: meson reports the test as SKIP (not as a pass), with the reason.
        print("SKIP: " + reason)
        sys.exit(77)
    unittest.main(verbosity=2)
