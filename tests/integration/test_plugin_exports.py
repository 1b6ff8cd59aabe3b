#!/usr/bin/env python3
"""Every shipped plugin exports exactly one dynamic symbol.

DESIGN.md section 3: a plugin .so exports only sovmesh_plugin_entry, so it
cannot clash with the core or another plugin (RTLD_LOCAL keeps them apart
at run time; this keeps them apart at link level too).  Checks every *.so
in $SOVMESH_BUILD_ROOT/plugins with `nm -D --defined-only`.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import unittest

ENTRY = "sovmesh_plugin_entry"


def defined_dynamic_symbols(path):
    """Names of the defined dynamic symbols of a shared object."""
    out = subprocess.run(
        ["nm", "-D", "--defined-only", path],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    names = []
    for line in out.splitlines():
        fields = line.split()
        # "ADDRESS TYPE NAME"; versioned names look like NAME@@VERSION.
        if len(fields) >= 3:
            names.append(fields[2])
    return names


class PluginExports(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        root = os.environ.get("SOVMESH_BUILD_ROOT")
        if not root:
            raise RuntimeError("SOVMESH_BUILD_ROOT is not set (run through meson test)")
        cls.plugin_dir = os.path.join(root, "plugins")
        cls.plugins = sorted(glob.glob(os.path.join(cls.plugin_dir, "*.so")))

    def test_nm_available(self):
        self.assertIsNotNone(shutil.which("nm"), "nm (binutils) is needed for this test")

    def test_plugins_were_built(self):
        self.assertTrue(self.plugins, "no plugin (*.so) found in %s" % self.plugin_dir)

    def test_exactly_one_export(self):
        for path in self.plugins:
            with self.subTest(plugin=os.path.basename(path)):
                names = defined_dynamic_symbols(path)
                self.assertEqual(
                    names, [ENTRY],
                    "%s exports %s; a plugin must export exactly %s "
                    "(build with -fvisibility=hidden and SOVMESH_PLUGIN_DEFINE)"
                    % (path, names or "nothing", ENTRY))

    def test_file_names(self):
        pattern = re.compile(r"^(discovery|backend|cache|agg|dp|trainer)-[a-z0-9][a-z0-9_]*\.so$")
        for path in self.plugins:
            base = os.path.basename(path)
            with self.subTest(plugin=base):
                self.assertRegex(base, pattern,
                                 "%s: a plugin file is <kind>-<name>.so, kind one of "
                                 "discovery backend cache agg dp trainer, name "
                                 "[a-z0-9][a-z0-9_]*" % path)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)
