"""Tests of time_to_accuracy_summary.py: `python3 -m unittest discover -s bench` (CI runs them)."""

import pathlib
import subprocess
import sys
import tempfile
import unittest

from time_to_accuracy_summary import crossing, first_holding, first_reaching

HERE = pathlib.Path(__file__).resolve().parent


def rows(trainer, points):
    return [(trainer, 10 * (k + 1), t, d) for k, (t, d) in enumerate(points)]


class Crossings(unittest.TestCase):
    def test_a_lucky_validation_is_reached_but_not_held(self):
        curve = rows("mtseg", [(1, 0.5), (2, 0.82), (3, 0.6), (4, 0.81), (5, 0.7), (6, 0.85)])
        self.assertEqual(first_reaching(curve, 0.8), 2)
        # Two of three at or above 0.8 first at t = 4 (0.82, 0.6, 0.81).
        self.assertEqual(first_holding(curve, 0.8), 4)
        self.assertIsNone(first_holding(curve, 0.84))

    def test_pytorch_that_never_got_there_is_a_lower_bound(self):
        curves = {"mtseg": rows("mtseg", [(1, 0.9), (2, 0.9), (3, 0.9)]),
                  "pytorch": rows("pytorch", [(15, 0.5), (30, 0.6), (45, 0.7)])}
        self.assertEqual(crossing(curves, first_reaching, 0.8), (1, 45, True))
        self.assertEqual(crossing(curves, first_holding, 0.8), (3, 45, True))


class CommandLine(unittest.TestCase):
    def run_summary(self, *csv_texts):
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for k, text in enumerate(csv_texts):
                path = pathlib.Path(tmp) / f"s{k + 1}" / "time_to_accuracy.csv"
                path.parent.mkdir()
                path.write_text(text)
                paths.append(str(path))
            return subprocess.run([sys.executable, str(HERE / "time_to_accuracy_summary.py"), *paths],
                                  capture_output=True, text=True)

    def test_ratios_median_and_count_over_runs(self):
        header = "trainer,iteration,training_seconds,val_mean_dice\n"
        # Run 1: 20x first and held; run 2: 5x first, 10x held.
        run1 = header + "mtseg,10,1,0.85\nmtseg,20,2,0.85\nmtseg,30,3,0.85\n" \
                        "pytorch,1,20,0.81\npytorch,2,40,0.81\npytorch,3,60,0.81\n"
        run2 = header + "mtseg,10,2,0.85\nmtseg,20,4,0.79\nmtseg,30,6,0.85\n" \
                        "pytorch,1,10,0.81\npytorch,2,20,0.5\npytorch,3,60,0.81\n"
        done = self.run_summary(run1, run2)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("first: 5.0x to 20.0x, median 12.5x, totals 10.0x (30.0 s against 3.0 s), "
                      "at least 10x in 1 of 2 runs", done.stdout)
        self.assertIn("held: 10.0x to 20.0x, median 15.0x, totals 13.3x (120.0 s against 9.0 s), "
                      "at least 10x in 2 of 2 runs", done.stdout)

    def test_a_pytorch_run_that_never_got_there_is_counted_as_a_lower_bound(self):
        done = self.run_summary("trainer,iteration,training_seconds,val_mean_dice\n"
                                "mtseg,10,1,0.9\nmtseg,20,2,0.9\nmtseg,30,3,0.9\n"
                                "pytorch,1,30,0.5\npytorch,2,60,0.7\n")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("1.0 / >60.0 s: >60.0x", done.stdout)
        self.assertIn("first: 60.0x to 60.0x, median 60.0x, totals 60.0x (60.0 s against 1.0 s), "
                      "at least 10x in 1 of 1 runs (1 of them lower bounds: PyTorch did not get there)",
                      done.stdout)

    def test_a_file_that_is_not_a_curve_is_an_error_naming_it(self):
        done = self.run_summary("trainer,iteration\nmtseg,1\n")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("s1/time_to_accuracy.csv has no column", done.stderr)


if __name__ == "__main__":
    unittest.main()
