"""Checks the forecast-accuracy code against the official M5 files in ../shared/data.

    python -m unittest discover -s training/tests    (numpy only)
"""
import csv
import math
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from longmem_train import accuracy as A  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data")
M5 = os.path.join(DATA, "supply", "m5_eval_subset")
REFERENCE = os.path.join(DATA, "reference_results")


class Rmsse(unittest.TestCase):
    def test_scale_starts_at_first_sale(self):
        # Leading zeros (before the product was listed) are not part of the scale: diffs are 1, 1.
        self.assertEqual(A.rmsse_scale([0, 0, 1, 2, 3]), 1.0)
        self.assertAlmostEqual(A.rmsse([0, 0, 1, 2, 3], [4, 5], [3, 3]), math.sqrt(2.5))

    def test_unscorable_series(self):
        self.assertTrue(math.isnan(A.rmsse([0, 0, 0], [1], [0])))
        self.assertTrue(math.isnan(A.rmsse([5, 5, 5], [5], [4])))  # flat history: zero scale
        self.assertAlmostEqual(A.wrmsse([1.0, float("nan"), 3.0], [1, 5, 1]), 2.0)


@unittest.skipUnless(os.path.isdir(M5), "../shared/data is not beside the project")
class M5Official(unittest.TestCase):
    """M5's weights are every series' share of its level's dollar sales. Aggregating the official
    bottom-level (item x store) dollar sales through our hierarchy must give the official figures of
    all 42,840 series on every level."""

    @classmethod
    def setUpClass(cls):
        with open(os.path.join(M5, "sales_test_evaluation.csv")) as f:
            cls.rows = list(csv.DictReader(f))
        cls.official = A.read_m5_weights(os.path.join(M5, "weights_evaluation.csv"))

    def test_every_series_of_every_level(self):
        dollars = {k: v[0] for k, v in self.official["Level12"].items()}
        totals = A.aggregate_m5(self.rows, lambda r: dollars[(r["item_id"], r["store_id"])])
        weights = A.level_weights(totals)
        self.assertEqual(sum(len(s) for s in totals.values()), 42840)
        for level, series in self.official.items():
            self.assertEqual(set(weights[level]), set(series), level)
            for key, (dollar, weight) in series.items():
                self.assertAlmostEqual(weights[level][key], weight, delta=1e-8, msg=f"{level} {key}")
                self.assertAlmostEqual(totals[level][key], dollar, delta=max(0.01, 5e-5 * dollar), msg=f"{level} {key}")

    def test_test_period_units(self):
        # The 28 official test days of 30,490 series: every row complete and non-negative.
        days = [c for c in self.rows[0] if c.startswith("d_")]
        self.assertEqual((len(self.rows), days[0], days[-1]), (30490, "d_1942", "d_1969"))
        self.assertTrue(all(float(r[d]) >= 0 for r in self.rows for d in days))

    def test_published_score_is_the_mean_of_levels(self):
        # WRMSSE = mean over the 12 levels of the weighted RMSSE, as the official tables state.
        for name in ("m5_accuracy_benchmarks_wrmsse.csv", "m5_accuracy_top50_wrmsse.csv"):
            with open(os.path.join(REFERENCE, name)) as f:
                for r in csv.DictReader(f):
                    levels = [float(r[f"L{i}"]) for i in range(1, 13)]
                    self.assertAlmostEqual(sum(levels) / 12, float(r["avg_WRMSSE"]), delta=6e-4, msg=r)


if __name__ == "__main__":
    unittest.main()
