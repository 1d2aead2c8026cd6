"""The training objectives: gBCE's β, its loss against a hand computation, and that both objectives
learn. Needs the training environment (training/requirements.lock)."""
import math
import os
import sys
import types
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:
    import torch
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

if HAVE_TORCH:
    from longmem_train.models import gbce_beta, gbce_loss, sampled_softmax_loss  # noqa: E402


@unittest.skipUnless(HAVE_TORCH or os.environ.get("LONGMEM_REQUIRE_TORCH"), "the training environment is not installed")
class Objectives(unittest.TestCase):
    def model(self, n_items=20, dim=4):
        """A stand-in recommender: its hidden state is the input item's embedding."""
        torch.manual_seed(0)
        emb = torch.nn.Embedding(n_items + 1, dim)
        return types.SimpleNamespace(item_emb=emb, out_emb=None, n_items=n_items, encode=lambda seq: emb(seq))

    def test_beta_spans_plain_bce_to_full_correction(self):
        self.assertAlmostEqual(gbce_beta(256, 3417, 0.0), 1.0)
        self.assertAlmostEqual(gbce_beta(256, 3417, 1.0), 256 / 3416)
        # gSASRec's formula, t = 0.75 on MovieLens-1M's 3,416 other items.
        alpha = 256 / 3416
        self.assertAlmostEqual(gbce_beta(256, 3417, 0.75), alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
        self.assertAlmostEqual(gbce_beta(10_000, 50, 0.75), 1.0, msg="more negatives than items: no correction")

    def gbce_by_hand(self, model, batch, negatives_of_row, beta):
        """gBCE summed position by position: −β·log σ(s⁺) − Σ log(1 − σ(s⁻)) over each row's negatives
        (a negative equal to the position's next item is skipped)."""
        want = 0.0
        for row, neg in zip(batch.tolist(), negatives_of_row):
            for a, b in zip(row[:-1], row[1:]):
                h = model.item_emb.weight[a]
                want -= beta * math.log(1 / (1 + math.exp(-float(h @ model.item_emb.weight[b]))))
                for n in neg:
                    if n != b:
                        want -= math.log(1 - 1 / (1 + math.exp(-float(h @ model.item_emb.weight[n]))))
        return want

    def test_gbce_matches_its_formula(self):
        model = self.model()
        batch = torch.tensor([[0, 3, 5, 7], [2, 4, 6, 8]])
        for t in (0.0, 0.75, 1.0):
            torch.manual_seed(1)
            got, count = gbce_loss(model, batch, 6, t)
            torch.manual_seed(1)
            neg = torch.randint(1, model.n_items + 1, (6,)).tolist()   # one draw, shared by both rows
            want = self.gbce_by_hand(model, batch, [neg, neg], gbce_beta(6, model.n_items, t))
            self.assertEqual(count, 6)
            self.assertAlmostEqual(float(got), want, places=4)

    def test_gbce_with_a_draw_for_each_sequence_matches_its_formula(self):
        model = self.model()
        batch = torch.tensor([[0, 3, 5, 7], [2, 4, 6, 8]])
        torch.manual_seed(1)
        got, count = gbce_loss(model, batch, 6, 0.75, draw="sequence")
        torch.manual_seed(1)
        negs = torch.randint(1, model.n_items + 1, (2, 6)).tolist()
        self.assertNotEqual(negs[0], negs[1])
        want = self.gbce_by_hand(model, batch, negs, gbce_beta(6, model.n_items, 0.75))
        self.assertEqual(count, 6)
        self.assertAlmostEqual(float(got), want, places=4)

    def test_gbce_needs_negatives(self):
        with self.assertRaises(ValueError):
            gbce_loss(self.model(), torch.tensor([[1, 2, 3]]), 0, 0.75)

    def test_both_objectives_learn_on_the_same_graph(self):
        """A few steps of each lower its own loss: the gradients reach the embeddings."""
        for loss_of in (lambda m, b: sampled_softmax_loss(m, b, 8), lambda m, b: gbce_loss(m, b, 8, 0.75),
                        lambda m, b: sampled_softmax_loss(m, b, 8, "sequence"),
                        lambda m, b: gbce_loss(m, b, 8, 0.75, "sequence")):
            model = self.model()
            opt = torch.optim.Adam(model.item_emb.parameters(), lr=0.05)
            batch = torch.tensor([[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]])
            torch.manual_seed(2)
            first = float(loss_of(model, batch)[0].detach())
            for _ in range(30):
                torch.manual_seed(2)
                loss, _ = loss_of(model, batch)
                opt.zero_grad(); loss.backward(); opt.step()
            torch.manual_seed(2)
            self.assertLess(float(loss_of(model, batch)[0].detach()), first * 0.8)


if __name__ == "__main__":
    unittest.main()
