#!/usr/bin/python3
"""Smoke run of bench/h2 (the HTTP/2 per-request workload): one round of one
second per system must give a sane figure for each, and the run must have
checked that both proxies refuse GET /admin. The real run takes minutes and
is not part of the test suite; this only proves the workload still works.
Env (set by ctest): SHUNT_BIN, SHUNT_SOURCE_DIR."""
import json
import os
import subprocess
import tempfile
import unittest

from shunt_harness import SHUNT_BIN, run_tests

SOURCE = os.environ.get("SHUNT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))


class BenchH2Smoke(unittest.TestCase):
    def test_one_short_round(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "h2")
            r = subprocess.run([os.path.join(SOURCE, "bench", "h2"), "--seconds", "1", "--rounds", "1", "--clients",
                                "2", "--streams", "20", "--shunt", SHUNT_BIN, "--out", out],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            with open(out + ".json") as f:
                result = json.load(f)
            with open(out + ".md") as f:
                table = f.read()
        for system in ("direct", "shunt", "haproxy"):
            m = result["median"][system]
            self.assertGreater(m["rps"], 10, system)
            self.assertGreater(m["cpu_us_per_req"], 0, system)
            self.assertGreater(m["p99_us"], 0, system)
        self.assertIn("| requests/s |", table)


if __name__ == "__main__":
    run_tests()
