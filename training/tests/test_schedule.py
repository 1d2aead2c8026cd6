"""The learning-rate schedule: constant by default, or a half cosine over the --epochs budget that a
refit follows for the epochs it trains. Needs the training environment (training/requirements.lock)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

if HAVE_TORCH:
    from train import learning_rate  # noqa: E402


@unittest.skipUnless(HAVE_TORCH or os.environ.get("LONGMEM_REQUIRE_TORCH"), "the training environment is not installed")
class Schedule(unittest.TestCase):
    def test_constant_is_the_base_rate_throughout(self):
        for progress in (0.0, 3.5, 20.0, 40.0):
            self.assertEqual(learning_rate(1e-3, "constant", progress, 20), 1e-3)

    def test_cosine_falls_from_the_base_rate_to_zero_over_the_budget(self):
        self.assertAlmostEqual(learning_rate(1e-3, "cosine", 0.0, 20), 1e-3)
        self.assertAlmostEqual(learning_rate(1e-3, "cosine", 10.0, 20), 0.5e-3)
        self.assertAlmostEqual(learning_rate(1e-3, "cosine", 5.0, 20), 1e-3 * (0.5 + 0.5 ** 0.5 / 2))
        self.assertAlmostEqual(learning_rate(1e-3, "cosine", 20.0, 20), 0.0)
        rates = [learning_rate(1e-3, "cosine", e / 4, 20) for e in range(81)]
        self.assertTrue(all(a > b for a, b in zip(rates, rates[1:])), "the rate must fall at every step")

    def test_past_the_budget_the_rate_stays_at_zero(self):
        self.assertEqual(learning_rate(1e-3, "cosine", 25.0, 20), 0.0)


if __name__ == "__main__":
    unittest.main()
