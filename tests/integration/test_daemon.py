"""sovmeshd life cycle: start, control socket, status/plugins, signals."""
import json
import os
import signal
import socket
import stat
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import (SOVMESH, SOVMESHD, DaemonTestCase, run,  # noqa: E402
                             write_config)


class DaemonTest(DaemonTestCase):

    def configured(self, extra=""):
        state = os.path.join(self.dir, "state")
        conf = write_config(os.path.join(self.dir, "sovmeshd.conf"), state, extra)
        return conf, state, os.path.join(state, "control.sock")

    def cli(self, sock, *args):
        return run([SOVMESH, "--socket", sock] + list(args))

    def test_version_and_help(self):
        r = run([SOVMESHD, "--version"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("sovmeshd", r.stdout)
        self.assertIn("plugin ABI 1.0", r.stdout)
        r = run([SOVMESHD, "--help"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("--check-config", r.stdout)
        r = run([SOVMESHD, "--log-level", "loud"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("'loud' is not one of", r.stderr)
        r = run([SOVMESHD, "stray"])
        self.assertEqual(r.returncode, 2)
        r = run([SOVMESH, "--help"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("fl aggregate", r.stdout)
        r = run([SOVMESH, "frobnicate"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown command 'frobnicate'", r.stderr)

    def test_start_status_plugins_and_sigterm(self):
        conf, state, sock = self.configured()
        d = self.start(["-c", conf])
        d.wait_for_socket(sock)
        # Secrets at rest: state dir 0700, control socket owner-only.
        self.assertEqual(stat.S_IMODE(os.stat(state).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o600)

        r = self.cli(sock, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("test-node", r.stdout)
        r = self.cli(sock, "--json", "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        st = json.loads(r.stdout)
        self.assertEqual(st["node_name"], "test-node")
        self.assertEqual(st["pid"], d.proc.pid)
        self.assertEqual(st["state_dir"], state)
        self.assertEqual(st["plugins_loaded"], 6)  # ollama, semantic, mdns, fedavg, laplace, reference

        r = self.cli(sock, "plugins", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        plugins = {p["label"]: p for p in json.loads(r.stdout)["plugins"]}
        self.assertEqual(sorted(plugins), ["agg-fedavg", "backend-ollama", "cache-semantic",
                                           "discovery-mdns", "dp-laplace",
                                           "trainer-reference"])
        self.assertEqual(plugins["agg-fedavg"]["kind"], "aggregator")
        self.assertEqual(plugins["agg-fedavg"]["abi"], "1.0")
        self.assertTrue(plugins["dp-laplace"]["file"].endswith("dp-laplace.so"))
        r = self.cli(sock, "plugins")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("fedavg", r.stdout)
        self.assertIn("laplace", r.stdout)

        self.assertEqual(d.stop(signal.SIGTERM), 0, d.log())
        self.assertIn("SIGTERM: shutting down", d.log())
        self.assertIn("stopped cleanly", d.log())
        self.assertFalse(os.path.exists(sock), "control socket left behind")

    def test_sigint_clean_shutdown(self):
        conf, _, sock = self.configured()
        d = self.start(["-c", conf])
        d.wait_for_socket(sock)
        self.assertEqual(d.stop(signal.SIGINT), 0, d.log())
        self.assertIn("stopped cleanly", d.log())

    def test_embedded_default_config(self):
        state = os.path.join(self.dir, "default-state")
        env = {"SOVMESH_STATE_DIR": state, "HOME": self.dir}
        d = self.start([], env=env)
        sock = os.path.join(state, "control.sock")
        d.wait_for_socket(sock)
        r = run([SOVMESH, "--json", "status"], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        st = json.loads(r.stdout)
        self.assertEqual(st["config"], "<embedded default>")
        self.assertEqual(st["plugins_loaded"], 6)  # ollama, semantic, mdns, fedavg, laplace, reference
        self.assertEqual(d.stop(), 0, d.log())

    def test_sighup_reload(self):
        conf, state, sock = self.configured()
        d = self.start(["-c", conf])
        d.wait_for_socket(sock)
        # Log level and the mesh-inference limits apply at once; other keys
        # need a restart and say so.
        write_config(conf, state,
                     'mesh = { peer_listen = "127.0.0.1:0"; request_timeout_secs = 5; '
                     'max_concurrent_peer_requests = 7; };\n'
                     'api = { listen = "127.0.0.1:0"; max_body_bytes = 8192; };')
        with open(conf) as f:
            text = f.read().replace('log_level = "info"', 'log_level = "debug"')
        with open(conf, "w") as f:
            f.write(text)
        d.send_signal(signal.SIGHUP)
        self.assertTrue(d.wait_for_log("log level is now debug"), d.log())
        self.assertTrue(d.wait_for_log(
            "api.max_body_bytes changed; restart sovmeshd to apply it"), d.log())
        self.assertTrue(d.wait_for_log("max_concurrent_peer_requests 7, "
                                       "request_timeout_secs 5"), d.log())
        self.assertNotIn("request_timeout_secs changed", d.log())
        r = self.cli(sock, "--json", "status")
        st = json.loads(r.stdout)
        self.assertEqual(st["log_level"], "debug")
        self.assertEqual(st["inference"]["serving"]["max_concurrent"], 7)

        # A broken config on reload is refused; the daemon keeps serving.
        with open(conf, "a") as f:
            f.write("\nbogus_key = 1;\n")
        d.send_signal(signal.SIGHUP)
        self.assertTrue(d.wait_for_log("reload refused"), d.log())
        self.assertIn("bogus_key", d.log())
        r = self.cli(sock, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(d.stop(), 0, d.log())

    def test_second_daemon_on_same_socket_refused(self):
        conf, _, sock = self.configured()
        d = self.start(["-c", conf])
        d.wait_for_socket(sock)
        d2 = self.start(["-c", conf])
        d2.proc.wait(timeout=30)
        self.assertEqual(d2.proc.returncode, 1)
        self.assertIn(sock, d2.log())
        # The first one still answers.
        self.assertEqual(self.cli(sock, "status").returncode, 0)
        self.assertEqual(d.stop(), 0, d.log())

    def test_stale_socket_replaced_and_state_dir_tightened(self):
        conf, state, sock = self.configured()
        os.makedirs(state, mode=0o755)
        os.chmod(self.dir, 0o755)
        os.chmod(state, 0o755)
        s = socket.socket(socket.AF_UNIX)
        s.bind(sock)  # bound but never listening: a stale socket file
        s.close()
        d = self.start(["-c", conf])
        d.wait_for_socket(sock)
        self.assertEqual(stat.S_IMODE(os.stat(state).st_mode), 0o700)
        self.assertIn("setting 0700", d.log())
        self.assertEqual(self.cli(sock, "status").returncode, 0)
        self.assertEqual(d.stop(), 0, d.log())

    def test_control_socket_refuses_other_users(self):
        conf, state, sock = self.configured()
        d = self.start(["-c", conf])
        d.wait_for_socket(sock)
        # Loosen the modes by hand: the uid check must still refuse.
        os.chmod(self.dir, 0o755)
        os.chmod(state, 0o755)
        os.chmod(sock, 0o666)
        if os.geteuid() != 0:
            self.skipTest("needs root to act as another user")
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
                data = s.recv(4096)
                os._exit(0 if data.startswith(b"HTTP/1.1 403") else 1)
            except Exception:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.WEXITSTATUS(status), 0, d.log())
        self.assertIn("refused a request from uid 65534", d.log())
        self.assertEqual(self.cli(sock, "status").returncode, 0)
        self.assertEqual(d.stop(), 0, d.log())

    def test_client_without_daemon(self):
        sock = os.path.join(self.dir, "nobody-here.sock")
        r = run([SOVMESH, "--socket", sock, "status"])
        self.assertEqual(r.returncode, 1)
        self.assertIn(sock, r.stderr)
        self.assertIn("is the daemon running", r.stderr)

    def test_unwritable_state_dir(self):
        blocker = os.path.join(self.dir, "file")
        open(blocker, "w").close()
        conf = write_config(os.path.join(self.dir, "c.conf"),
                            os.path.join(blocker, "state"))
        d = self.start(["-c", conf])
        d.proc.wait(timeout=30)
        self.assertEqual(d.proc.returncode, 1)
        self.assertIn("cannot create state directory", d.log())

    def test_log_prefixes(self):
        conf, _, sock = self.configured()
        d = self.start(["-c", conf, "--log-level", "debug"],
                       env={"JOURNAL_STREAM": "1:2"})
        d.wait_for_socket(sock)
        self.assertEqual(d.stop(), 0)
        lines = [l for l in d.log().splitlines() if l]
        self.assertTrue(lines)
        for l in lines:
            self.assertRegex(l, r"^<[3-7]>", "journald prefix missing: %r" % l)


if __name__ == "__main__":
    unittest.main(verbosity=2)
