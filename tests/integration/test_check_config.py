"""sovmeshd --check-config: valid configs pass; every kind of error names
file, line and key, and the daemon refuses to start with the same line."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from sovmesh_testlib import SOVMESHD, DaemonTestCase, run, write_config  # noqa: E402


class CheckConfigTest(DaemonTestCase):

    def conf(self, extra="", fl=True):
        return write_config(os.path.join(self.dir, "s.conf"),
                            os.path.join(self.dir, "state"), extra, fl=fl)

    def check(self, path):
        return run([SOVMESHD, "--check-config", "-c", path])

    def test_valid_and_default(self):
        r = self.check(self.conf())
        self.assertEqual(r.returncode, 0, r.stderr)
        # backend-ollama, cache-semantic, discovery-mdns, agg-fedavg, dp-laplace
        self.assertIn("configuration OK (6 plugins checked)", r.stdout)
        r = run([SOVMESHD, "--check-config"], env={"SOVMESH_STATE_DIR": self.dir})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("<embedded default>: configuration OK", r.stdout)
        r = run([SOVMESHD, "--print-default-config"])
        self.assertEqual(r.returncode, 0)
        self.assertIn('aggregation_method = "fedavg"', r.stdout)
        # The printed default is itself a valid config.
        p = os.path.join(self.dir, "printed.conf")
        with open(p, "w") as f:
            f.write(r.stdout)
        self.assertEqual(self.check(p).returncode, 0)

    def test_plugin_settings_accepted(self):
        p = self.conf("plugin_settings = { dp-laplace = { sensitivity_factor = 1.0; }; };")
        r = self.check(p)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_errors_name_file_line_key(self):
        cases = [
            # (appended text, line of the error, key, reason)
            ("mesh = { request_timeout_secs = \"soon\"; };", "mesh.request_timeout_secs",
             None),
            ("mesh = { max_concurrent_peer_requests = 100000; };",
             "mesh.max_concurrent_peer_requests", None),
            ("mesh = { discovery = \"Bad Name\"; };", "mesh.discovery", None),
            ("mesh = { frobnicate = true; };", "mesh.frobnicate", None),
            ("federated_learning_typo = { };", "federated_learning_typo", None),
            ("plugin_settings = { dp-laplace = { sensitivity_factr = 1.0; }; };",
             "plugin_settings.dp-laplace.sensitivity_factr", None),
            ("plugin_settings = { dp-laplace = { sensitivity_factor = -3.0; }; };",
             "plugin_settings.dp-laplace.sensitivity_factor", None),
            ("plugin_settings = { agg-median = { x = 1; }; };",
             "plugin_settings.agg-median", "no plugin of that name is in use"),
        ]
        for extra, key, reason in cases:
            with self.subTest(extra=extra):
                p = self.conf(extra)
                with open(p) as f:
                    line = f.read().splitlines().index(extra) + 1
                r = self.check(p)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn("%s:%d: %s" % (p, line, key), r.stderr)
                if reason:
                    self.assertIn(reason, r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                # The daemon refuses to start with the same line.
                d = self.start(["-c", p])
                d.proc.wait(timeout=30)
                self.assertEqual(d.proc.returncode, 1)
                self.assertIn("%s:%d: %s" % (p, line, key), d.log())

    def test_syntax_error(self):
        p = self.conf("mesh = { enabled = ; };")
        r = self.check(p)
        self.assertEqual(r.returncode, 1)
        self.assertIn(p + ":", r.stderr)

    def test_missing_file(self):
        p = os.path.join(self.dir, "nope.conf")
        r = self.check(p)
        self.assertEqual(r.returncode, 1)
        self.assertIn(p, r.stderr)

    def test_fl_disabled_loads_backend_cache_and_discovery(self):
        r = self.check(self.conf(fl=False))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("3 plugins checked", r.stdout)
        r = self.check(self.conf('mesh = { discovery = ""; };', fl=False))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("2 plugins checked", r.stdout)
        r = self.check(self.conf('mesh = { discovery = ""; };\ncache = { enabled = false; };', fl=False))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("1 plugin checked", r.stdout)
        r = self.check(self.conf('mesh = { discovery = ""; };\ninference = { backend = ""; };\n'
                                 'cache = { plugin = ""; };', fl=False))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("0 plugins checked", r.stdout)

    def test_backend_is_one_plugin_name(self):
        r = self.check(self.conf('inference = { backend = "ollama, other"; };'))
        self.assertEqual(r.returncode, 1)
        self.assertIn("inference.backend", r.stderr)
        r = self.check(self.conf('inference = { backend = "nosuch"; };'))
        self.assertEqual(r.returncode, 1)
        self.assertIn("backend-nosuch", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
