"""SASRec's prefill computes only what the step state needs (each layer's keys and values over its
receptive field, outputs only where the next layer reads them); it must equal the keys and values of
encoding the whole window. Its chunk (several items per user in one pass) must equal stepping them
one by one. Needs the training environment (training/requirements.lock)."""
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
    from longmem_train.export import chunk_positions  # noqa: E402
    from longmem_train.models import SASRec  # noqa: E402


def whole_window_state(model, seq):
    """The state as encoding every position of every layer gives it (what prefill replaced): the
    digits of the last span - 1 items, the later layers' keys and values there, the mask."""
    s1 = model.span - 1
    bias = model.attention_bias(seq)
    x = model.embed(seq)
    ks, vs = [], []
    for i, block in enumerate(model.blocks):
        x, k, v = block(x, bias, keep_kv=True)
        if i:
            ks.append(k[:, :, -s1:])
            vs.append(v[:, :, -s1:])
    kv = (torch.stack(ks), torch.stack(vs)) if ks else ()
    return (model.id_digits(seq[:, -s1:]), *kv, (seq[:, -s1:] > 0).float())


@unittest.skipUnless(HAVE_TORCH or os.environ.get("LONGMEM_REQUIRE_TORCH"), "the training environment is not installed")
class Prefill(unittest.TestCase):
    def model(self, layers, span, window, n_items=40):
        torch.manual_seed(layers * 100 + span)
        return SASRec(n_items=n_items, window=window, dim=16, layers=layers, heads=2, span=span).eval()

    def check(self, layers, span, window):
        model = self.model(layers, span, window)
        seq = torch.randint(1, 41, (window + 3, window))
        for row in range(seq.shape[0]):   # every amount of left padding, none to all
            seq[row, :row] = 0
        with torch.no_grad():
            want = whole_window_state(model, seq)
            got = model.prefill(seq)
        self.assertEqual(len(want), len(got))
        for n, (w, g) in enumerate(zip(want, got)):
            self.assertEqual(w.shape, g.shape, n)
            self.assertLess(float((w - g).abs().max()), 1e-5, f"state {n}: layers={layers} span={span} window={window}")

    def test_stepping_equals_encoding(self):
        """Item by item from an empty state, with the first layer's keys and values looked up by the
        cached items' ids, the step ends where encoding the window does; and the prefill's state
        steps on like the stepped one."""
        # A catalogue past 2,048 items: ids take both digits.
        for layers, span, window in ((2, 5, 12), (1, 6, 8), (3, 4, 10)):
            model = self.model(layers, span, window, n_items=5000)
            seq = torch.randint(1, 5001, (6, window + 7))
            seq[0, :9] = 0                                    # a short history
            state = [torch.zeros(s) for s in model.state_shapes(seq.shape[0]).values()]
            names = list(model.state_shapes(1))
            with torch.no_grad():
                for t in range(seq.shape[1]):
                    item = seq[:, t]
                    hidden, new = model.step(torch.where(item > 0, item, 1), *state)
                    active = item > 0
                    for i, (name, old, entry) in enumerate(zip(names, state, new)):
                        axis = model.append_axes[name]
                        moved = torch.cat([old.narrow(axis, 1, old.shape[axis] - 1), entry], dim=axis)
                        batch_axis = 1 if name in ("k_cache", "v_cache") else 0
                        keep = active.view([-1 if a == batch_axis else 1 for a in range(old.ndim)])
                        state[i] = torch.where(keep, moved, old)
                want = model.encode(seq[:, -window:])[:, -1]
                self.assertLess(float((hidden - want).abs().max()), 1e-4, f"layers={layers}")
                built = model.prefill(seq[:, -window:])
                nxt = torch.randint(1, 5001, (seq.shape[0],))
                a, _ = model.step(nxt, *state)
                b, _ = model.step(nxt, *built)
                self.assertLess(float((a - b).abs().max()), 1e-4, f"layers={layers}")

    def test_equals_encoding_the_whole_window(self):
        self.check(layers=2, span=5, window=12)    # the window reaches past the receptive field
        self.check(layers=2, span=5, window=9)     # exactly the receptive field
        self.check(layers=3, span=4, window=10)
        self.check(layers=1, span=6, window=8)

    def test_ids_survive_half_precision(self):
        model = self.model(2, 5, 12)
        items = torch.tensor([0, 1, 2047, 2048, 2049, 23_716, 4_194_303])
        digits = model.id_digits(items).half().float()
        self.assertTrue(torch.equal((digits[:, 0] * 2048 + digits[:, 1]).long(), items))

    def test_attention_bias_rows_are_the_last_rows_of_the_whole(self):
        model = SASRec(n_items=40, window=12, dim=16, layers=2, heads=2, span=5)
        seq = torch.randint(0, 41, (4, 12))
        self.assertTrue(torch.equal(model.attention_bias(seq, 4), model.attention_bias(seq)[:, :, -4:]))


def step_one(model, state, item, active):
    """One step of the users where `active`; the others keep their state (the daemon's sliding rule)."""
    hidden, new = model.step(torch.where(active, item, 1), *state)
    names = list(model.state_shapes(1))
    moved = []
    for name, old, entry in zip(names, state, new):
        axis = model.append_axes[name]
        slid = torch.cat([old.narrow(axis, 1, old.shape[axis] - 1), entry], dim=axis)
        batch_axis = 1 if name in ("k_cache", "v_cache") else 0
        keep = active.view([-1 if a == batch_axis else 1 for a in range(old.ndim)])
        moved.append(torch.where(keep, slid, old))
    return hidden, moved


@unittest.skipUnless(HAVE_TORCH or os.environ.get("LONGMEM_REQUIRE_TORCH"), "the training environment is not installed")
class Chunk(unittest.TestCase):
    def test_bursts_equal_stepping_one_by_one(self):
        """Users fed bursts of 0 to 2 * span + 3 items per call (past the cache, so a burst pushes
        out cached positions and its own first items): every item's hidden state and each user's
        state after the burst equal stepping the items one at a time."""
        for layers, span in ((2, 5), (1, 6), (3, 4)):
            torch.manual_seed(layers)
            model = SASRec(n_items=5000, window=3 * span, dim=16, layers=layers, heads=2, span=span).eval()
            users = 5
            gen = torch.Generator().manual_seed(span)
            chunked = [torch.zeros(s) for s in model.state_shapes(users).values()]
            stepped = [torch.zeros(s) for s in model.state_shapes(users).values()]
            with torch.no_grad():
                for _ in range(6):
                    lengths = torch.randint(0, 2 * span + 4, (users,), generator=gen).tolist()
                    lengths[0] = 0                             # one user without events in the call
                    keys, tails = chunk_positions(lengths, span - 1)
                    if not keys.size:
                        continue
                    items = torch.randint(1, 5001, (sum(lengths),), generator=gen)
                    hidden, chunked = model.chunk(items, torch.from_numpy(keys), torch.from_numpy(tails), *chunked)
                    chunked = list(chunked)
                    first = torch.tensor([0, *lengths]).cumsum(0)
                    for t in range(max(lengths)):
                        active = torch.tensor([t < n for n in lengths])
                        rows = torch.tensor([int(first[u]) + t if t < n else 0 for u, n in enumerate(lengths)])
                        want, stepped = step_one(model, stepped, items[rows], active)
                        diff = (want - hidden[rows]).abs().max(dim=1).values[active]
                        self.assertLess(float(diff.max()), 1e-4, f"layers={layers} item {t} of the burst")
                    for n, (a, b) in enumerate(zip(chunked, stepped)):
                        self.assertEqual(a.shape, b.shape)
                        self.assertLess(float((a - b).abs().max()), 1e-4, f"layers={layers} state {n}")


if __name__ == "__main__":
    unittest.main()
