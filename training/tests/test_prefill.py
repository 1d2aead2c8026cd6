"""SASRec's prefill computes only what the step cache needs (each layer's keys and values over its
receptive field, outputs only where the next layer reads them); it must equal the keys and values of
encoding the whole window. Needs the training environment (training/requirements.lock)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:
    import torch
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

if HAVE_TORCH:
    from longmem_train.models import SASRec  # noqa: E402


def whole_window_cache(model, seq):
    """The cache as encoding every position of every layer gives it (what prefill replaced)."""
    s1 = model.span - 1
    bias = model.attention_bias(seq)
    x = model.embed(seq)
    ks, vs = [], []
    for block in model.blocks:
        x, k, v = block(x, bias, keep_kv=True)
        ks.append(k[:, :, -s1:])
        vs.append(v[:, :, -s1:])
    return torch.stack(ks), torch.stack(vs), (seq[:, -s1:] > 0).float()


@unittest.skipUnless(HAVE_TORCH or os.environ.get("LONGMEM_REQUIRE_TORCH"), "the training environment is not installed")
class Prefill(unittest.TestCase):
    def check(self, layers, span, window):
        torch.manual_seed(layers * 100 + span)
        model = SASRec(n_items=40, window=window, dim=16, layers=layers, heads=2, span=span).eval()
        seq = torch.randint(1, 41, (window + 3, window))
        for row in range(seq.shape[0]):   # every amount of left padding, none to all
            seq[row, :row] = 0
        with torch.no_grad():
            want = whole_window_cache(model, seq)
            got = model.prefill(seq)
        for name, w, g in zip(("keys", "values", "mask"), want, got):
            self.assertEqual(w.shape, g.shape, name)
            self.assertLess(float((w - g).abs().max()), 1e-5, f"{name}: layers={layers} span={span} window={window}")

    def test_equals_encoding_the_whole_window(self):
        self.check(layers=2, span=5, window=12)    # the window reaches past the receptive field
        self.check(layers=2, span=5, window=9)     # exactly the receptive field
        self.check(layers=3, span=4, window=10)
        self.check(layers=1, span=6, window=8)

    def test_attention_bias_rows_are_the_last_rows_of_the_whole(self):
        model = SASRec(n_items=40, window=12, dim=16, layers=2, heads=2, span=5)
        seq = torch.randint(0, 41, (4, 12))
        self.assertTrue(torch.equal(model.attention_bias(seq, 4), model.attention_bias(seq)[:, :, -4:]))


if __name__ == "__main__":
    unittest.main()
