"""The CLI's first-contact messages (issue 11): an unknown command, `shunt
help` and `--version` answer as such instead of "A subcommand is required";
`check -c DIR` and a tab in the YAML name their cause."""
import os
import subprocess
import tempfile
import unittest

from shunt_harness import SHUNT_BIN, run_tests


def shunt(*args):
    return subprocess.run([SHUNT_BIN, *args], capture_output=True, text=True, timeout=30)


class CliMessages(unittest.TestCase):
    def test_unknown_command_names_the_commands(self):
        r = shunt("bogus")
        self.assertEqual(r.returncode, 1)
        self.assertIn("unknown command 'bogus'", r.stderr)
        self.assertIn("run, check", r.stderr)
        self.assertNotIn("subcommand is required", r.stderr)

    def test_help_and_version(self):
        r = shunt("help")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Usage: shunt", r.stdout)
        self.assertIn("explain", r.stdout)
        r = shunt("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^shunt \d+\.\d+")

    def test_check_a_directory(self):
        with tempfile.TemporaryDirectory() as d:
            r = shunt("check", "-c", d)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("is a directory", r.stdout + r.stderr)
        self.assertNotIn("empty", r.stdout + r.stderr)

    def test_tab_in_yaml_is_named(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]\nlog:\n\tlevel: info\n")
            f.flush()
            r = shunt("check", "-c", f.name)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("line 4 has a tab", r.stdout + r.stderr)


if __name__ == "__main__":
    run_tests()
