"""Trust end to end: identity, pairing by code / URI / QR image, mutual-TLS
peer port with pinning, revocation, restart — real daemons on 127.0.0.x
with separate state directories (DESIGN.md §6.1-3, 6.6-7)."""
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import SOVMESH, DaemonTestCase, run  # noqa: E402


def free_port(host):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Node:
    """One sovmeshd on its own loopback address and state directory."""

    def __init__(self, case, name, host, ttl=600, attempts=5):
        self.case, self.name, self.host = case, name, host
        self.dir = os.path.join(case.dir, name)
        self.state = os.path.join(self.dir, "state")
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.state, "control.sock")
        self.peer_port = free_port(host)
        self.pair_port = free_port(host)
        self.conf = os.path.join(self.dir, "sovmeshd.conf")
        with open(self.conf, "w") as f:
            f.write("""
node = { name = "%s"; state_dir = "%s"; };
mesh = { peer_listen = "%s:%d"; };
pairing = { listen = "%s:%d"; code_ttl_secs = %d; max_attempts = %d; };
api = { listen = "%s:0"; };
federated_learning = { enabled = false; };
""" % (name, self.state, host, self.peer_port, host, self.pair_port, ttl, attempts, host))
        self.daemon = None

    def start(self):
        self.daemon = self.case.start(["-c", self.conf])
        self.daemon.wait_for_socket(self.sock)
        return self

    def stop(self, sig=signal.SIGTERM):
        code = self.daemon.stop(sig)
        self.daemon = None
        return code

    def cli(self, *args, timeout=90):
        return run([SOVMESH, "--socket", self.sock] + list(args), timeout=timeout)

    def cli_json(self, *args):
        r = self.cli("--json", *args)
        self.case.assertEqual(r.returncode, 0, "%s %s: %s\n%s" % (
            self.name, args, r.stderr, self.daemon.log() if self.daemon else ""))
        return json.loads(r.stdout)

    def ident(self):
        return self.cli_json("id")

    def peers(self):
        return {p["name"]: p for p in self.cli_json("peers")["peers"]}

    def offer(self):
        return self.cli_json("pair", "code", "--no-wait")

    def pair_addr(self):
        return "%s:%d" % (self.host, self.pair_port)


class TrustTest(DaemonTestCase):

    def node(self, name, host, **kw):
        return Node(self, name, host, **kw).start()

    def pair_by_code(self, a, b):
        offer = a.offer()
        r = b.cli("pair", "join", offer["code"], "--addr", a.pair_addr())
        self.assertEqual(r.returncode, 0, r.stderr + b.daemon.log() + a.daemon.log())
        return offer, r

    # ---- identity ----

    def test_identity_and_state_file_modes(self):
        a = self.node("alpha", "127.0.0.2")
        ident = a.ident()
        self.assertEqual(ident["name"], "alpha")
        self.assertRegex(ident["fingerprint"], r"^[0-9a-f]{64}$")
        self.assertRegex(ident["short_fingerprint"], r"^[0-9A-Z]{4}(-[0-9A-Z]{4}){3}$")
        self.assertEqual(ident["peer_port"], a.peer_port)
        r = a.cli("id")
        self.assertIn(ident["short_fingerprint"], r.stdout)

        def mode(p):
            return stat.S_IMODE(os.stat(os.path.join(a.state, p)).st_mode)
        self.assertEqual(mode("."), 0o700)
        self.assertEqual(mode("identity"), 0o700)
        self.assertEqual(mode("identity/tls-key.pem"), 0o600)
        self.assertEqual(mode("identity/x25519.key"), 0o600)
        # The fingerprint is stable across restarts.
        self.assertEqual(a.stop(), 0)
        a.start()
        self.assertEqual(a.ident()["fingerprint"], ident["fingerprint"])
        # Private keys never appear in the log.
        with open(os.path.join(a.state, "identity", "tls-key.pem")) as f:
            key_body = f.read().splitlines()[1]
        self.assertNotIn(key_body, a.daemon.log())

    def test_leaked_key_permissions_refused(self):
        a = self.node("alpha", "127.0.0.2")
        self.assertEqual(a.stop(), 0)
        os.chmod(os.path.join(a.state, "identity", "tls-key.pem"), 0o644)
        d = self.start(["-c", a.conf])
        d.proc.wait(timeout=30)
        self.assertEqual(d.proc.returncode, 1)
        self.assertIn("tls-key.pem", d.log())

    # ---- pairing by code ----

    def test_pair_by_code_ping_revoke_restart(self):
        a = self.node("alpha", "127.0.0.2")
        b = self.node("bravo", "127.0.0.3")
        ida, idb = a.ident(), b.ident()
        offer, joined = self.pair_by_code(a, b)
        # Both instances confirm the pairing with the other's name and short fp.
        self.assertIn("alpha", joined.stdout)
        self.assertIn(ida["short_fingerprint"], joined.stdout)
        pa, pb = a.peers(), b.peers()
        self.assertEqual(pa["bravo"]["fingerprint"], idb["fingerprint"])
        self.assertEqual(pb["alpha"]["fingerprint"], ida["fingerprint"])
        self.assertTrue(a.daemon.wait_for_log("paired with bravo"), a.daemon.log())
        self.assertIn(idb["short_fingerprint"], a.daemon.log())
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(a.state, "peers.json")).st_mode),
                         0o600)

        # The used code is refused.
        r = b.cli("pair", "join", offer["code"], "--addr", a.pair_addr())
        self.assertNotEqual(r.returncode, 0)

        # Mutual TLS both ways.
        self.assertEqual(b.cli_json("peers", "ping", "alpha")["name"], "alpha")
        self.assertEqual(a.cli_json("peers", "ping", "bravo")["name"], "bravo")

        # Restart keeps trust.
        self.assertEqual(a.stop(), 0)
        a.start()
        self.assertIn("bravo", a.peers())
        self.assertEqual(b.cli_json("peers", "ping", "alpha")["name"], "alpha")

        # Revocation: B's connection to A is open (kept alive by the ping);
        # removing B on A refuses it at once, that connection included.
        self.assertEqual(b.cli_json("peers", "ping", "alpha")["name"], "alpha")
        r = a.cli("peers", "remove", "bravo")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("bravo", a.peers())
        r = b.cli("peers", "ping", "alpha")
        self.assertNotEqual(r.returncode, 0, r.stdout)
        r = a.cli("peers", "ping", "bravo")
        self.assertNotEqual(r.returncode, 0)
        r = a.cli("peers", "remove", "bravo")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("bravo", r.stderr)

    def test_wrong_codes_counted_then_burned(self):
        a = self.node("alpha", "127.0.0.2", attempts=3)
        b = self.node("bravo", "127.0.0.3")
        offer = a.offer()
        good = offer["code"]
        wrong = ("00000-00000" if good.replace("-", "") != "0000000000" else "11111-11111")
        for i in range(3):
            r = b.cli("pair", "join", wrong, "--addr", a.pair_addr())
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("error:", r.stderr)
        # After the limit the code is burned: even the right one is refused.
        r = b.cli("pair", "join", good, "--addr", a.pair_addr())
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(a.peers(), {})
        self.assertEqual(b.peers(), {})
        self.assertTrue(a.daemon.wait_for_log("burned"), a.daemon.log())

    def test_expired_code_refused(self):
        a = self.node("alpha", "127.0.0.2", ttl=1)
        b = self.node("bravo", "127.0.0.3")
        offer = a.offer()
        time.sleep(2.5)
        r = b.cli("pair", "join", offer["code"], "--addr", a.pair_addr())
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(a.peers(), {})

    # ---- pairing by URI and by QR image ----

    def test_pair_by_uri_and_by_qr_image(self):
        a = self.node("alpha", "127.0.0.2")
        b = self.node("bravo", "127.0.0.3")
        c = self.node("charlie", "127.0.0.4")
        offer = a.offer()
        self.assertTrue(offer["uri"].startswith("sovmesh://pair?"))
        self.assertIn(a.ident()["fingerprint"], offer["uri"])
        r = b.cli("pair", "uri", offer["uri"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("alpha", b.peers())

        png = os.path.join(self.dir, "qr.png")
        r = a.cli("pair", "code", "--no-wait", "--png", png)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = c.cli("pair", "scan", png)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("alpha", c.peers())
        self.assertEqual(sorted(a.peers()), ["bravo", "charlie"])

        # A URI whose fingerprint is not the issuer's is refused (MITM).
        offer = a.offer()
        fp = a.ident()["fingerprint"]
        forged = offer["uri"].replace(fp, ("0" if fp[0] != "0" else "1") + fp[1:])
        d = self.node("delta", "127.0.0.5")
        r = d.cli("pair", "uri", forged)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("fingerprint", r.stderr)
        self.assertEqual(d.peers(), {})

    def test_uri_tries_next_address_and_issuer_waits(self):
        a = self.node("alpha", "127.0.0.2")
        b = self.node("bravo", "127.0.0.3")
        # The issuer's CLI waits and reports the pairing itself.
        waiter = subprocess.Popen([SOVMESH, "--socket", a.sock, "pair", "code"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            code = None
            while code is None:
                line = waiter.stdout.readline()
                self.assertTrue(line, "pair code ended early")
                if line.startswith("Pairing code: "):
                    code = line.split(": ", 1)[1].strip()
            # A URI whose first address has nothing listening: the joiner
            # moves on to the next one (a refused code would not).
            uri = ("sovmesh://pair?v=1&name=alpha&fp=%s&code=%s&addr=127.0.0.1:9&addr=%s&port=%d"
                   % (a.ident()["fingerprint"], code, a.pair_addr(), a.peer_port))
            r = b.cli("pair", "uri", uri)
            self.assertEqual(r.returncode, 0, r.stderr + b.daemon.log())
            out, err = waiter.communicate(timeout=60)
            self.assertEqual(waiter.returncode, 0, err)
            self.assertIn("Paired with bravo (%s)" % b.ident()["short_fingerprint"], out)
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.communicate()

    def test_qr_svg_from_control_api(self):
        a = self.node("alpha", "127.0.0.2")
        status, ctype, body = self._control_get(a, "/v1/pair/qr.svg")
        self.assertEqual(status, 404)
        a.offer()
        status, ctype, body = self._control_get(a, "/v1/pair/qr.svg")
        self.assertEqual(status, 200)
        self.assertEqual(ctype, "image/svg+xml")
        self.assertTrue(body.startswith(b"<svg"), body[:40])
        self.assertIn(b"<path", body)

    def _control_get(self, node, path):
        import http.client

        class UnixConnection(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(node.sock)
        conn = UnixConnection("localhost", timeout=30)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, resp.getheader("Content-Type"), body

    def test_malformed_pairing_input(self):
        a = self.node("alpha", "127.0.0.2")
        bad = [
            ("pair", "uri", "http://example/pair"),
            ("pair", "uri", "sovmesh://pair?v=2&code=x"),
            ("pair", "uri", "sovmesh://pair?v=1&fp=zz&code=AAAAA-AAAAA&addr=127.0.0.1:1"),
            ("pair", "join", "not-a-code!", "--addr", "127.0.0.9:1"),
            ("pair", "join", "AAAAA-AAAAA", "--addr", "nowhere"),
            ("pair", "join", "AAAAA-AAAAA"),
        ]
        for args in bad:
            with self.subTest(args=args):
                r = a.cli(*args)
                self.assertNotEqual(r.returncode, 0)
                self.assertTrue(r.stderr.startswith("error: "), r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        text = os.path.join(self.dir, "not-an-image.png")
        with open(text, "w") as f:
            f.write("hello")
        r = a.cli("pair", "scan", text)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not a PNG or JPEG", r.stderr)
        # The daemon kept serving.
        self.assertEqual(a.ident()["name"], "alpha")

    # ---- nobody unpaired gets through ----

    def test_unpaired_refused_both_directions(self):
        a = self.node("alpha", "127.0.0.2")
        b = self.node("bravo", "127.0.0.3")
        self.pair_by_code(a, b)
        # C (never paired) takes B's place: same address and port.
        b_port = b.peer_port
        self.assertEqual(b.stop(), 0)
        c = self._node_on(Node(self, "charlie", "127.0.0.3"), "127.0.0.3", b_port)
        # A calling "B" reaches C: A refuses C's certificate (pin mismatch)...
        r = a.cli("peers", "ping", "bravo")
        self.assertNotEqual(r.returncode, 0)
        # ...and C refused A's certificate during the handshake.
        self.assertTrue(c.daemon.wait_for_log("refused", timeout=10), c.daemon.log())
        # A survived writing to the vanished B's kept-alive connection
        # (EPIPE, not a fatal SIGPIPE).
        self.assertEqual(a.ident()["name"], "alpha")

        # A stranger with a fresh self-signed certificate gets no HTTP answer.
        self._stranger_refused(a)

    def _node_on(self, node, host, peer_port):
        with open(node.conf) as f:
            conf = f.read()
        conf = re.sub(r'peer_listen = "[^"]*"', 'peer_listen = "%s:%d"' % (host, peer_port),
                      conf)
        with open(node.conf, "w") as f:
            f.write(conf)
        node.peer_port = peer_port
        return node.start()

    def _stranger_refused(self, a):
        certtool = shutil.which("certtool")
        curl = shutil.which("curl")
        if not certtool or not curl:
            self.fail("certtool and curl are needed (packages gnutls-bin, curl)")
        d = tempfile.mkdtemp(dir=self.dir)
        key, crt, tmpl = (os.path.join(d, n) for n in ("k.pem", "c.pem", "t.cfg"))
        with open(tmpl, "w") as f:
            f.write('cn = "stranger"\nexpiration_days = 2\ntls_www_client\n')
        subprocess.run([certtool, "--generate-privkey", "--key-type", "ed25519",
                        "--outfile", key], check=True, capture_output=True)
        subprocess.run([certtool, "--generate-self-signed", "--load-privkey", key,
                        "--template", tmpl, "--outfile", crt], check=True,
                       capture_output=True)
        url = "https://%s:%d/peer/v1/hello" % (a.host, a.peer_port)
        r = subprocess.run([curl, "-sS", "-k", "--tlsv1.3", "--max-time", "10",
                            "--cert", crt, "--key", key, url],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertNotIn("fingerprint", r.stdout)
        # Without any certificate: refused too.
        r = subprocess.run([curl, "-sS", "-k", "--tlsv1.3", "--max-time", "10", url],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0, r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
