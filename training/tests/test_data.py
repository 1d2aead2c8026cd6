"""The splits that decide which users are tested, and on what input (numpy only).

    python -m unittest discover -s training/tests
"""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from longmem_train import data as D                      # noqa: E402
from longmem_train.evaluate import complete_users        # noqa: E402


class GsasrecSplit(unittest.TestCase):
    def load(self, text):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "ml1m_partial_user_sequences.txt"), "w") as f:
                f.write(text)
            return D.load(f"gsasrec:{d}")

    def test_gap_users_are_tested_from_their_known_prefix(self):
        # u1 is complete; u2's penultimate item is unknown and its last item (40) appears nowhere else.
        ds = self.load("u1 F 10 20 30 31\nu2 P 20 10 ? 40\n")
        self.assertEqual(ds.vocab, ["10", "20", "30", "31", "40"])   # 40 is indexed; `?` is not an item
        train, valid, test = D.split(ds)
        ix = {item: n + 1 for n, item in enumerate(ds.vocab)}
        self.assertEqual(train["u1"], [ix["10"], ix["20"]])
        self.assertEqual(valid["u1"], ([ix["10"], ix["20"]], ix["30"]))
        self.assertEqual(test["u1"], ([ix["10"], ix["20"], ix["30"]], ix["31"]))
        # u2 trains on what is known, is not validated, and is tested one item short.
        self.assertEqual(train["u2"], [ix["20"], ix["10"]])
        self.assertNotIn("u2", valid)
        self.assertEqual(test["u2"], ([ix["20"], ix["10"]], ix["40"]))
        self.assertEqual(sorted(complete_users(test, ds)), ["u1"])
        # A refit adds u1's validation item; u2 has none, and no test item is ever added.
        self.assertEqual(D.with_validation_items(train, valid), {"u1": [ix["10"], ix["20"], ix["30"]], "u2": [ix["20"], ix["10"]]})

    def test_malformed_partial_row_is_refused(self):
        with self.assertRaisesRegex(ValueError, "expected `user F|P items"):
            self.load("u1 P 10 20 30\n")


class LeaveOneOut(unittest.TestCase):
    def test_short_users_only_train(self):
        ds = D.Dataset("t", {"a": [1, 2], "b": [1, 2, 3, 4]}, ["x", "y", "z", "w"], "")
        train, valid, test = D.split(ds)
        self.assertEqual(train, {"a": [1, 2], "b": [1, 2]})
        self.assertEqual(valid, {"b": ([1, 2], 3)})
        self.assertEqual(test, {"b": ([1, 2, 3], 4)})
        self.assertEqual(complete_users(test, ds), test)
        self.assertEqual(D.with_validation_items(train, valid), {"a": [1, 2], "b": [1, 2, 3]})


if __name__ == "__main__":
    unittest.main()
