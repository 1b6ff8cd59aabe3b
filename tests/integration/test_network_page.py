"""The Settings -> Network page in a real browser (issue 9): Debian's
chromium driven by playwright-core (tests/js/network_page_check.mjs)
against sovmeshd's front door, with real daemons on 127.0.0.x paired by
code.  Screenshots go to $SOVMESH_BUILD_ROOT/test-artifacts/network-page/.

Needs node 18+, tests/js's npm packages (tools/quickstart.sh runs npm ci)
and /usr/bin/chromium (or $CHROMIUM); skipped only when chromium or node
is absent."""
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import BUILD_ROOT, SOURCE_ROOT, SOVMESH, DaemonTestCase, run  # noqa: E402

JS_DIR = os.path.join(SOURCE_ROOT, "tests", "js")
CHECK = os.path.join(JS_DIR, "network_page_check.mjs")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = os.path.join(BUILD_ROOT, "test-artifacts", "network-page")


def missing_tools():
    """Why the browser test cannot run here, or '' when it can."""
    if not os.access(CHROMIUM, os.X_OK):
        return "chromium is not installed (%s; Debian package chromium)" % CHROMIUM
    if not shutil.which("node"):
        return "node is not installed (Debian package nodejs)"
    return ""


def prepare_playwright():
    """'' when tests/js's pinned playwright-core is installed (npm ci if
    not), else the reason (a failure, not a skip: CI must have it)."""
    with open(os.path.join(JS_DIR, "package-lock.json")) as f:
        want = json.load(f)["packages"]["node_modules/playwright-core"]["version"]
    pj = os.path.join(JS_DIR, "node_modules", "playwright-core", "package.json")
    have = None
    if os.path.exists(pj):
        with open(pj) as f:
            have = json.load(f).get("version")
    if have == want:
        return ""
    npm = shutil.which("npm")
    if not npm:
        return "playwright-core %s is not installed and npm is missing" % want
    r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return "npm ci in %s failed:\n%s" % (JS_DIR, (r.stdout + r.stderr)[-3000:])
    return ""


def free_port(host):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Node:
    """One sovmeshd on its own loopback address and state directory."""

    def __init__(self, case, name, host, fl=False):
        self.case, self.name, self.host = case, name, host
        self.dir = os.path.join(case.dir, name)
        self.state = os.path.join(self.dir, "state")
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.state, "control.sock")
        self.pair_port = free_port(host)
        self.conf = os.path.join(self.dir, "sovmeshd.conf")
        with open(self.conf, "w") as f:
            f.write("""
node = { name = "%s"; state_dir = "%s"; };
mesh = { peer_listen = "%s:%d"; };
pairing = { listen = "%s:%d"; };
api = { listen = "%s:0"; };
federated_learning = { enabled = %s; };
""" % (name, self.state, host, free_port(host), host, self.pair_port, host,
                "true" if fl else "false"))
        self.daemon = case.start(["-c", self.conf])
        self.daemon.wait_for_socket(self.sock)

    def cli(self, *args, timeout=90):
        return run([SOVMESH, "--socket", self.sock] + list(args), timeout=timeout)

    def cli_json(self, *args):
        r = self.cli("--json", *args)
        self.case.assertEqual(r.returncode, 0, "%s %s: %s\n%s" % (
            self.name, args, r.stderr, self.daemon.log()))
        return json.loads(r.stdout)

    def peers(self):
        return {p["name"]: p for p in self.cli_json("peers")["peers"]}

    def pair_addr(self):
        return "%s:%d" % (self.host, self.pair_port)


class ForeignSite:
    """Another origin on loopback (a different port): its page tries to
    read the peer list and remove a peer through the control mirror."""

    PAGE = """<!DOCTYPE html><html><body><script>
(async () => {
  const api = %(api)s, r = {};
  try { const x = await fetch(api + '/sovmesh/v1/peers');
        r.get = 'status ' + x.status + ': ' + await x.text(); }
  catch (e) { r.get = 'failed: ' + e; }
  try { const x = await fetch(api + '/sovmesh/v1/peers/remove', {method: 'POST',
          headers: {'Content-Type': 'application/json'}, body: JSON.stringify({peer: %(peer)s})});
        r.post = 'status ' + x.status; }
  catch (e) { r.post = 'failed: ' + e; }
  try { const x = await fetch(api + '/sovmesh/v1/peers/remove', {method: 'POST',
          mode: 'no-cors', headers: {'Content-Type': 'text/plain'},
          body: JSON.stringify({peer: %(peer)s})});
        r.post_simple = 'opaque ' + x.type; }
  catch (e) { r.post_simple = 'failed: ' + e; }
  try { const x = await fetch(api + '/settings/network');
        r.page = 'status ' + x.status + ': ' + (await x.text()).length; }
  catch (e) { r.page = 'failed: ' + e; }
  window.__result = r; window.__done = true;
})();
</script></body></html>"""

    def __init__(self, api, peer):
        body = (self.PAGE % {"api": json.dumps(api), "peer": json.dumps(peer)}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/evil.html" % self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


class NetworkPageTest(DaemonTestCase):

    def setUp(self):
        why = missing_tools()
        if why:
            self.skipTest(why)
        why = prepare_playwright()
        if why:
            self.fail(why)
        super().setUp()

    def pair_by_code(self, issuer, joiner):
        offer = issuer.cli_json("pair", "code", "--no-wait")
        r = joiner.cli("pair", "join", offer["code"], "--addr", issuer.pair_addr())
        self.assertEqual(r.returncode, 0, r.stderr + joiner.daemon.log() + issuer.daemon.log())

    def wait_connected(self, node, names, timeout=90):
        deadline = time.monotonic() + timeout
        while True:
            peers = node.peers()
            if all(peers.get(n, {}).get("status") == "connected" for n in names):
                return peers
            if time.monotonic() > deadline:
                self.fail("%s: peers %s not all connected: %s\n%s" % (
                    node.name, names, peers, node.daemon.log()))
            time.sleep(0.5)

    def http_get(self, url, headers=None):
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def test_network_page_in_chromium(self):
        alpha = Node(self, "alpha", "127.0.0.2", fl=True)
        bravo = Node(self, "bravo", "127.0.0.3")
        charlie = Node(self, "charlie", "127.0.0.4")
        delta = Node(self, "delta", "127.0.0.5")   # joined from the page
        echo = Node(self, "echo", "127.0.0.6")     # scans the page's QR code
        self.pair_by_code(alpha, bravo)
        self.pair_by_code(alpha, charlie)
        self.wait_connected(alpha, ["bravo", "charlie"])

        # `sovmesh network`: the page's address with the key in the fragment.
        net = alpha.cli_json("network")
        with open(os.path.join(alpha.state, "api-token")) as f:
            token = f.read().strip()
        api = "http://" + alpha.cli_json("status")["inference"]["api"]
        self.assertEqual(net["url"], api + "/settings/network#key=" + token)
        plain = alpha.cli("network")
        self.assertEqual(plain.returncode, 0, plain.stderr)
        self.assertEqual(plain.stdout.strip(), net["url"])
        # --open hands the same URL to xdg-open (a stand-in here).
        fake = os.path.join(self.dir, "fakebin")
        os.makedirs(fake)
        with open(os.path.join(fake, "xdg-open"), "w") as f:
            f.write('#!/bin/sh\nprintf "%%s" "$1" > "%s"\n' % os.path.join(self.dir, "opened"))
        os.chmod(os.path.join(fake, "xdg-open"), 0o755)
        r = run([SOVMESH, "--socket", alpha.sock, "network", "--open"],
                env={"PATH": fake + os.pathsep + os.environ.get("PATH", "")})
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(self.dir, "opened")) as f:
            self.assertEqual(f.read(), net["url"])
        r = alpha.cli("network", "--bogus")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown argument '--bogus'", r.stderr)

        # The page itself: strict headers, and no secret in it.
        for path in ("/settings/network", "/settings/network/network.js",
                     "/settings/network/network.css"):
            status, hdrs, body = self.http_get(api + path)
            self.assertEqual(status, 200, path)
            self.assertNotIn(token, body)
            csp = hdrs.get("Content-Security-Policy", "")
            self.assertIn("default-src 'self'", csp)
            self.assertIn("img-src 'self' data:", csp)
            self.assertIn("frame-ancestors 'none'", csp)
            self.assertNotIn("unsafe-inline", csp)
            self.assertEqual(hdrs.get("X-Frame-Options"), "DENY")
            self.assertEqual(hdrs.get("X-Content-Type-Options"), "nosniff")
            self.assertEqual(hdrs.get("Referrer-Policy"), "no-referrer")
            self.assertEqual(hdrs.get("Cache-Control"), "no-store")
        _, _, html = self.http_get(api + "/settings/network")
        self.assertNotRegex(html, r"<script>|<script(?![^>]*\bsrc=)[^>]*>", "no inline script")
        self.assertEqual(self.http_get(api + "/")[2], "Ollama is running")
        # DNS rebinding: a Host that is not loopback is refused, page included.
        status, _, _ = self.http_get(api + "/settings/network", {"Host": "evil.example:80"})
        self.assertEqual(status, 403)
        # Another origin (even on loopback) is refused on the page and the API.
        status, hdrs, _ = self.http_get(api + "/sovmesh/v1/peers",
                                        {"Origin": "http://127.0.0.1:1"})
        self.assertEqual(status, 403)
        self.assertNotIn("Access-Control-Allow-Origin", hdrs)

        # The code the page's Add Peer uses, issued by delta.
        offer = delta.cli_json("pair", "code", "--no-wait")
        foreign = ForeignSite(api, "bravo")
        self.addCleanup(foreign.stop)

        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        cfg = {"url": net["url"], "artifacts": ARTIFACTS, "peers": ["bravo", "charlie"],
               "joinCode": offer["code"], "joinAddr": delta.pair_addr(), "joinName": "delta",
               "removePeer": "charlie", "keepPeer": "bravo", "foreignUrl": foreign.url,
               "expectBudget": True,
               "flOffUrl": "http://%s/settings/network"
                           % bravo.cli_json("status")["inference"]["api"]}
        t0 = time.monotonic()
        r = subprocess.run(["node", CHECK, json.dumps(cfg)], cwd=JS_DIR, capture_output=True,
                           text=True, timeout=400, env=dict(os.environ, CHROMIUM=CHROMIUM))
        took = time.monotonic() - t0
        sys.stderr.write("network_page_check.mjs: %.1f s\n" % took)
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.fail("no result from the browser check (exit %d):\n%s\n%s" % (
                r.returncode, r.stdout[-3000:], r.stderr[-3000:]))
        self.assertEqual(r.returncode, 0, "%s\n%s\n%s" % (res.get("error"), r.stderr[-3000:],
                                                          alpha.daemon.log()[-3000:]))

        # This node and its two peers, connected, with their addresses.
        ident = alpha.cli_json("id")
        self.assertEqual(res["nodeName"], "alpha")
        self.assertEqual(res["nodeFp"], ident["short_fingerprint"])
        cards = {c["name"]: c["text"] for c in res["peerCards"]}
        self.assertEqual(sorted(cards), ["bravo", "charlie"])
        self.assertIn("🟢 Connected", cards["bravo"])
        self.assertIn("127.0.0.3", cards["bravo"])
        self.assertIn("Last sync", cards["bravo"])
        self.assertIn("Models", cards["bravo"])
        # Budget and statistics.
        self.assertRegex(res["budgetText"], r"ε spent [0-9.]+ of [0-9.]+ — remaining [0-9.]+")
        self.assertEqual(sorted(res["stats"]), ["cache", "local", "peer", "template"])
        # Pairing code with a countdown; the add and the remove took effect.
        self.assertRegex(res["countdown"], r"^\d+:\d\d$")
        self.assertEqual(res["hashAfterLoad"], "")
        self.assertEqual(res["ariaLive"], "polite")
        self.assertEqual(sorted(res["peersAfter"]), ["bravo", "delta"])
        peers = alpha.peers()
        self.assertEqual(sorted(peers), ["bravo", "delta"], "`sovmesh peers` agrees")
        self.assertIn("alpha", delta.peers(), "pairing is mutual")
        # Phone width, read-only without the key.
        self.assertTrue(res["phoneReadonly"])
        self.assertTrue(res["phoneGenDisabled"])
        self.assertLessEqual(res["phoneWidths"]["scroll"], res["phoneWidths"]["client"])
        self.assertIn("Federated learning is off", res["flOffText"])
        # The foreign page could neither read nor change anything.
        f = res["foreign"]
        self.assertTrue(f["get"].startswith("failed"), f)
        self.assertTrue(f["post"].startswith("failed"), f)
        self.assertTrue(f["page"].startswith("failed"), f)
        self.assertIn("bravo", alpha.peers(), "the foreign POST removed nothing")
        self.assertEqual(res["consoleErrors"], [])

        # The QR screenshot decodes to the pairing URI with alpha's
        # fingerprint: echo pairs from it (`pair scan` pins that fingerprint).
        for name in ("desktop.png", "desktop-after.png", "phone.png", "qr.png"):
            self.assertTrue(os.path.getsize(os.path.join(ARTIFACTS, name)) > 1000, name)
        r = echo.cli("pair", "scan", os.path.join(ARTIFACTS, "qr.png"))
        self.assertEqual(r.returncode, 0, r.stderr + echo.daemon.log() + alpha.daemon.log())
        self.assertIn(ident["short_fingerprint"], r.stdout)
        self.assertEqual(echo.peers()["alpha"]["fingerprint"], ident["fingerprint"])
        self.assertIn("echo", alpha.peers())

        # A clean stop (under ASan: no leak, no error from serving the page).
        self.assertEqual(alpha.daemon.stop(), 0, alpha.daemon.log()[-5000:])
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, alpha.daemon.log())


if __name__ == "__main__":
    unittest.main()
