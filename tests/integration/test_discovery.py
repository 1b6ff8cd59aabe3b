"""Discovery end to end on the multi-host harness (issue 4): real
avahi-daemons limited to test veths in network namespaces, real sovmeshd
on each host.  Needs root (skipped otherwise); CI runs as root."""
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns_harness import Mesh, skip_unless_available  # noqa: E402

# Short health checks so Offline/Connected show up quickly; generous
# deadlines (CI machines are slow and busy), except where the issue fixes
# the number (discover within 5 s, Offline within 10 s).
MESH = "discovery = \"mdns\"; health_interval_ms = 500;"


def peers(mesh, i):
    return mesh.cli_json(i, "peers")


def paired(mesh, i, name):
    for p in peers(mesh, i)["peers"]:
        if p["name"] == name:
            return p
    return None


def discovered_names(mesh, i):
    return {d.get("name") for d in peers(mesh, i)["discovered"]}


def pair(mesh, issuer, joiner, with_addr=False):
    offer = mesh.cli_json(issuer, "pair", "code", "--no-wait")
    args = ["pair", "join", offer["code"]]
    if with_addr:
        args += ["--addr", mesh.hosts[issuer].pair_addr()]
    else:
        # As a person would: the code is typed once the joiner's discovery
        # has seen the issuer announce an open pairing listener (TXT pair=).
        name = mesh.hosts[issuer].name
        mesh.wait_for(lambda: any(d.get("name") == name and d.get("pairing_open")
                                  for d in peers(mesh, joiner)["discovered"]),
                      timeout=15, what="%s to see %s offering a code" % (
                          mesh.hosts[joiner].name, name))
    r = mesh.cli(joiner, *args)
    if r.returncode != 0:
        raise AssertionError("pairing %s <- %s failed: %s\n%s" % (
            mesh.hosts[issuer].name, mesh.hosts[joiner].name, r.stderr, mesh.logs()))
    return r


@skip_unless_available()
class DiscoveryTest(unittest.TestCase):

    def setUp(self):
        self.mesh = Mesh(3)

    def tearDown(self):
        self.mesh.teardown()

    def names(self):
        return {i: self.mesh.hosts[i].name for i in (1, 2, 3)}

    def test_discover_pair_offline_restart(self):
        m = self.mesh
        for i in (1, 2, 3):
            m.start_host(i, mesh_extra=MESH)
        names = self.names()
        # 3 hosts discover each other within 5 s.
        start = time.monotonic()
        for i in (1, 2, 3):
            others = {names[k] for k in (1, 2, 3) if k != i}
            m.wait_for(lambda i=i, o=others: o <= discovered_names(m, i), timeout=5,
                       what="%s to discover %s" % (names[i], others))
        self.assertLess(time.monotonic() - start, 5.0 + 1.0)

        # Two pair by code without --addr: the issuer is found through mDNS.
        pair(m, 1, 2)
        m.wait_for(lambda: (paired(m, 1, names[2]) or {}).get("status") == "connected",
                   timeout=20, what="host 1 to see host 2 connected")
        m.wait_for(lambda: (paired(m, 2, names[1]) or {}).get("status") == "connected",
                   timeout=20, what="host 2 to see host 1 connected")
        p = paired(m, 1, names[2])
        self.assertIsNotNone(p["latency_ms"])
        self.assertEqual(p["address"], m.hosts[2].peer_addr())
        # Paired peers leave the "discovered" list.
        self.assertNotIn(names[2], discovered_names(m, 1))
        self.assertIn(names[3], discovered_names(m, 1))
        r = m.cli(1, "peers")
        self.assertIn("Connected", r.stdout)

        # Host 2 killed (no goodbye): Offline on host 1 within 10 s.
        m.stop_host(2, signal.SIGKILL)
        t0 = time.monotonic()
        m.wait_for(lambda: paired(m, 1, names[2])["status"] == "offline", timeout=10,
                   what="host 1 to see host 2 offline")
        self.assertLess(time.monotonic() - t0, 10.5)

        # Restarted: Connected again.
        m.start_host(2, mesh_extra=MESH)
        m.wait_for(lambda: paired(m, 1, names[2])["status"] == "connected", timeout=30,
                   what="host 1 to see host 2 connected again")

        # A clean stop sends an mDNS goodbye: Offline at once (well before
        # health checks could notice).
        m.stop_host(2, signal.SIGTERM)
        m.wait_for(lambda: paired(m, 1, names[2])["status"] == "offline", timeout=10,
                   what="goodbye to make host 2 offline")

    def test_address_change_is_followed(self):
        m = self.mesh
        for i in (1, 2):
            m.start_host(i, mesh_extra=MESH, listen_ip="0.0.0.0")
        names = self.names()
        m.wait_for(lambda: names[2] in discovered_names(m, 1), timeout=15,
                   what="host 1 to discover host 2")
        pair(m, 1, 2, with_addr=True)
        m.wait_for(lambda: (paired(m, 1, names[2]) or {}).get("status") == "connected",
                   timeout=20, what="host 2 connected")
        old = m.hosts[2].ip
        new = "10.231.1.77"
        m.change_address(2, new)
        # avahi re-announces the new address; the peer is matched by
        # fingerprint and followed, and the trust store learns the address.
        m.wait_for(lambda: (paired(m, 1, names[2]) or {}).get("address", "").startswith(
            new + ":") and paired(m, 1, names[2])["status"] == "connected",
            timeout=45, what="host 1 to follow host 2 from %s to %s (sees %s)" % (
                old, new, peers(m, 1)))
        self.assertEqual(paired(m, 1, names[2])["addresses"][0], "%s:%d" % (
            new, m.hosts[2].peer_port))

    def test_service_name_conflict_renamed(self):
        m = self.mesh
        # Two devices with the same name: Avahi's alternative name ("h1 #2")
        # keeps the second one visible, told apart by fingerprint.
        m.hosts[2].name = m.hosts[1].name
        for i in (1, 2):
            m.start_host(i, mesh_extra=MESH)
        m.wait_for(lambda: any("is taken on the LAN; using" in m.log(i) for i in (1, 2)),
                   timeout=20, what="one namesake to take an alternative service name")
        renamed = 1 if "is taken on the LAN; using" in m.log(1) else 2
        other = 3 - renamed
        fp = m.cli_json(renamed, "id")["fingerprint"]
        m.wait_for(lambda: any(d.get("fingerprint") == fp
                               for d in peers(m, other)["discovered"]), timeout=20,
                   what="host %d to discover its renamed namesake" % other)

    def test_thermal_state_reaches_peers(self):
        m = self.mesh
        fake = os.path.join(m.hosts[2].dir, "fake-sys")
        zone = os.path.join(fake, "class", "thermal", "thermal_zone0")
        os.makedirs(zone)
        with open(os.path.join(zone, "temp"), "w") as f:
            f.write("90000\n")
        m.start_host(1, mesh_extra=MESH)
        m.start_host(2, mesh_extra=MESH + ' thermal_sysfs_root = "%s";' % fake)
        names = self.names()
        pair(m, 1, 2, with_addr=True)
        m.wait_for(lambda: ((paired(m, 1, names[2]) or {}).get("thermal") or {}).get("hot"),
                   timeout=20, what="host 1 to see host 2 hot")
        self.assertAlmostEqual(paired(m, 1, names[2])["thermal"]["temp_c"], 90.0)
        st = m.cli_json(2, "status")
        self.assertTrue(st["thermal"]["hot"])
        self.assertIn("hot", m.cli(2, "status").stdout)

    def test_static_discovery_without_avahi(self):
        m = self.mesh
        for i in (1, 2):
            m.kill_avahi(i)
        names = self.names()
        for i, other in ((1, 2), (2, 1)):
            m.start_host(
                i, mesh_extra="discovery = \"static\"; health_interval_ms = 500;",
                config_extra='plugin_settings = { discovery-static = { peers = "%s"; }; };'
                % m.hosts[other].peer_addr())
        pair(m, 1, 2, with_addr=True)
        m.wait_for(lambda: (paired(m, 1, names[2]) or {}).get("status") == "connected",
                   timeout=20, what="static: host 1 sees host 2 connected")
        m.wait_for(lambda: (paired(m, 2, names[1]) or {}).get("status") == "connected",
                   timeout=20, what="static: host 2 sees host 1 connected")

    def test_avahi_restart_survived(self):
        m = self.mesh
        for i in (1, 2):
            m.start_host(i, mesh_extra=MESH)
        names = self.names()
        m.wait_for(lambda: names[2] in discovered_names(m, 1), timeout=10,
                   what="host 1 to discover host 2")
        m.kill_avahi(1)
        time.sleep(1.5)
        # sovmeshd keeps running and answering.
        self.assertTrue(m.sovmeshd_running(1), m.log(1))
        self.assertEqual(m.cli_json(1, "id")["name"], names[1])
        m.start_avahi(1)
        # ...and discovery recovers once avahi is back: a host started now
        # is discovered.
        m.start_host(3, mesh_extra=MESH)
        m.wait_for(lambda: names[3] in discovered_names(m, 1), timeout=30,
                   what="host 1 to discover host 3 after avahi came back")
        self.assertTrue(m.sovmeshd_running(1))
        self.assertIn("avahi-daemon is not available", m.log(1))


if __name__ == "__main__":
    unittest.main(verbosity=2)
