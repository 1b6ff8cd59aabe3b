"""sovmeshd refuses every broken plugin at start-up: one line naming the
file and the reason, and a non-zero exit (DESIGN.md §3).  The broken
plugins are built by tests/plugins/meson.build."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import SOVMESHD, TEST_PLUGIN_DIR, DaemonTestCase, run  # noqa: E402

# aggregation_method -> the reason phrase of the refusal
REFUSALS = {
    "badmagic": "bad magic",
    "smalldesc": "descriptor too small",
    "abimajor": "ABI major 2 is not supported",
    "abiminor": "is newer than this host's ABI 1.0",
    "unknownkind": "unknown plugin kind 99",
    "wrongkind": "wrong kind: it is a noise mechanism plugin, expected an aggregator",
    "wrongname": "name mismatch",
    "nosymbol": "missing symbol sovmesh_plugin_entry",
    "nulldesc": "returned NULL",
    "unresolved": "dlopen failed",
    "noops": "no ops table",
    "smallops": "ops table too small",
    "nullslot": "mandatory ops slot 'aggregate' is NULL",
    "nocreate": "no create function",
    "noversion": "no version",
}


class PluginRefusalTest(DaemonTestCase):

    def _write(self, method, extra):
        path = os.path.join(self.dir, "%s.conf" % method)
        with open(path, "w") as f:
            f.write('node = { state_dir = "%s"; plugin_path = ["%s"]; };\n'
                    'mesh = { peer_listen = "127.0.0.1:0"; };\n'
                    'federated_learning = { aggregation_method = "%s"; };\n%s'
                    % (os.path.join(self.dir, "state"), TEST_PLUGIN_DIR, method, extra))
        return path

    def test_each_refusal_stops_the_daemon(self):
        for method, reason in REFUSALS.items():
            with self.subTest(plugin=method):
                conf = self._write(method, "")
                d = self.start(["-c", conf])
                d.proc.wait(timeout=30)
                log = d.log().strip()
                self.assertEqual(d.proc.returncode, 1, log)
                self.assertEqual(len(log.splitlines()), 1, log)
                self.assertIn(os.path.join(TEST_PLUGIN_DIR, "agg-%s.so" % method), log)
                self.assertIn(reason, log)
                # --check-config says the same and exits 1.
                r = run([SOVMESHD, "--check-config", "-c", conf])
                self.assertEqual(r.returncode, 1)
                self.assertIn(reason, r.stderr)

    def test_missing_plugin_lists_search_path(self):
        conf = self._write("nosuch", "")
        d = self.start(["-c", conf])
        d.proc.wait(timeout=30)
        self.assertEqual(d.proc.returncode, 1)
        self.assertIn("agg-nosuch.so not found", d.log())
        self.assertIn(TEST_PLUGIN_DIR, d.log())

    def test_good_third_party_plugin_loads(self):
        conf = self._write("good", "")
        sock = os.path.join(self.dir, "state", "control.sock")
        d = self.start(["-c", conf])
        d.wait_for_socket(sock)
        self.assertIn("agg-good", d.log())
        self.assertEqual(d.stop(), 0, d.log())

    def test_env_plugin_path(self):
        path = os.path.join(self.dir, "env.conf")
        with open(path, "w") as f:
            f.write('node = { state_dir = "%s"; };\n'
                    'federated_learning = { aggregation_method = "abimajor"; };\n'
                    % os.path.join(self.dir, "state"))
        r = run([SOVMESHD, "--check-config", "-c", path],
                env={"SOVMESH_PLUGIN_PATH": TEST_PLUGIN_DIR})
        self.assertEqual(r.returncode, 1)
        self.assertIn("ABI major 2", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
