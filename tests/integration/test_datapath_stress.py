"""The short version of scripts/stress (issue 15): a few iterations of the
burst, reset and SIGKILL sequence on every data path, every byte checked by
hash both ways. The long soak is `scripts/stress` (200 iterations)."""
import unittest

from shunt_harness import run_tests
from stress_datapath import Run, parse_args


class DatapathStress(unittest.TestCase):
    def run_stress(self, *args):
        run = Run(parse_args(["--quick", *args]))
        self.assertEqual(run.main(), 0, run.failures)
        self.assertEqual(run.failures, [])
        self.assertGreater(run.connections, 0)

    def test_sockmap(self):
        self.run_stress("--datapath", "sockmap", "--iterations", "4", "--burst", "200")

    def test_sockmap_same_ports(self):
        """Every instance on the same ports: a SIGKILLed predecessor's
        sockets are still being torn down when the next one accepts."""
        self.run_stress("--datapath", "sockmap", "--iterations", "2", "--burst", "200", "--same-ports")

    def test_splice(self):
        self.run_stress("--datapath", "splice", "--iterations", "1", "--burst", "100")

    def test_copy(self):
        self.run_stress("--datapath", "copy", "--iterations", "1", "--burst", "100")


if __name__ == "__main__":
    run_tests()
