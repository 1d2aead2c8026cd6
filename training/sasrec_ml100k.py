"""Train a SASRec-style model on MovieLens-100k and export it in longmem's `full` graph contract.

This is the demo model (and the model the integration tests load). The full training pipeline for
every recommender lives in issue 3; this script is deliberately one file and reproducible:

    python training/sasrec_ml100k.py --data ../shared/data/seqrec/recbole_ml100k --out models/ml100k-sasrec

Contract of the exported graph (see src/model.rs):
    input  item_seq   int64   [batch, window]  item indices, left-padded with 0
    output top_items  int64   [batch, candidates]   best first; candidates = k + window by default, so
    output top_scores float32 [batch, candidates]   the daemon can drop items the user has just seen
    output scores     float32 [batch, n_items + 1]  (index 0 is padding; the daemon does not fetch it)
Item index i (1-based) is line i of `items.txt`, which holds the external item id.
"""
import argparse, hashlib, json, math, os, random, time

import numpy as np
import torch
import torch.nn as nn


def load_sequences(data_dir):
    """Per-user item sequences in timestamp order (ties broken by file order), external ids as strings."""
    path = os.path.join(data_dir, "ml-100k.inter")
    rows = []
    with open(path) as f:
        next(f)
        for n, line in enumerate(f):
            user, item, _rating, ts = line.rstrip("\n").split("\t")
            rows.append((user, float(ts), n, item))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    seqs = {}
    for user, _ts, _n, item in rows:
        seqs.setdefault(user, []).append(item)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return seqs, digest


class SASRec(nn.Module):
    def __init__(self, n_items, window, dim, blocks, heads, dropout, candidates):
        super().__init__()
        self.window, self.candidates = window, candidates
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(window, dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("causal", torch.triu(torch.full((window, window), float("-inf")), diagonal=1))

    def encode(self, seq):
        positions = torch.arange(seq.shape[1], device=seq.device)
        x = self.item_emb(seq) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(positions)
        x = self.drop(x) * (seq > 0).unsqueeze(-1)
        x = self.encoder(x, mask=self.causal)
        return self.norm(x)

    def forward(self, item_seq):
        """Inference graph: the last position's hidden state scored against every item."""
        hidden = self.encode(item_seq)[:, -1, :]
        scores = hidden @ self.item_emb.weight.T
        scores = torch.cat([torch.full_like(scores[:, :1], -1e9), scores[:, 1:]], dim=1)
        top_scores, top_items = torch.topk(scores, self.candidates, dim=1)
        return top_items, top_scores, scores


def left_pad(seq, window):
    seq = seq[-window:]
    return [0] * (window - len(seq)) + seq


def evaluate(model, seqs_idx, window, n_items, split):
    """Leave-one-out full ranking: HR@10 and NDCG@10, items already seen removed."""
    model.eval()
    hits, ndcg, n = 0.0, 0.0, 0
    users = [u for u in seqs_idx if len(seqs_idx[u]) >= 3]
    with torch.no_grad():
        for start in range(0, len(users), 256):
            batch = users[start:start + 256]
            cut = -1 if split == "test" else -2
            prefixes = [seqs_idx[u][:cut] for u in batch]
            targets = [seqs_idx[u][cut] for u in batch]
            x = torch.tensor([left_pad(p, window) for p in prefixes])
            _, _, scores = model(x)
            for row, (prefix, target) in enumerate(zip(prefixes, targets)):
                s = scores[row].clone()
                s[[i for i in prefix if i != target]] = -1e9
                rank = int((s > s[target]).sum())
                if rank < 10:
                    hits += 1
                    ndcg += 1 / math.log2(rank + 2)
                n += 1
    return hits / n, ndcg / n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/seqrec/recbole_ml100k")
    p.add_argument("--out", default="models/ml100k-sasrec")
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--k", type=int, default=10, help="items per recommendation")
    p.add_argument("--candidates", type=int, default=0, help="items the graph returns (default k + window)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--negatives", type=int, default=128, help="sampled negatives per position (sampled softmax)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--version", default="1")
    args = p.parse_args()

    random.seed(args.seed); np.random.seed(args.seed); torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    seqs, digest = load_sequences(args.data)
    vocab = sorted({i for s in seqs.values() for i in s}, key=int)
    index = {item: n + 1 for n, item in enumerate(vocab)}
    seqs_idx = {u: [index[i] for i in s] for u, s in seqs.items()}
    n_items = len(vocab)
    candidates = min(args.candidates or args.k + args.window, n_items)
    model = SASRec(n_items, args.window, args.dim, args.blocks, args.heads, args.dropout, candidates)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    # Training sequences: everything but the last two items (validation and test), windows of `window + 1`.
    train = []
    for s in seqs_idx.values():
        s = s[:-2]
        for end in range(len(s), 1, -args.window):
            chunk = s[max(0, end - args.window - 1):end]
            train.append(left_pad(chunk, args.window + 1))
    train = torch.tensor(train)
    print(f"users={len(seqs)} items={n_items} training windows={len(train)}")

    best, best_state, bad, t0 = -1.0, None, 0, time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train))
        total = 0.0
        for start in range(0, len(train), 128):
            batch = train[perm[start:start + 128]]
            inp, pos = batch[:, :-1], batch[:, 1:]
            hidden = model.encode(inp)                                   # [B, W, D]
            neg = torch.randint(1, n_items + 1, (args.negatives,))
            cand = torch.cat([pos.unsqueeze(-1), neg.expand(*pos.shape, -1)], dim=-1)  # [B, W, 1+N]
            logits = (hidden.unsqueeze(2) * model.item_emb(cand)).sum(-1)
            logits[..., 1:] = logits[..., 1:].masked_fill(neg.view(1, 1, -1) == pos.unsqueeze(-1), -1e9)
            loss = nn.functional.cross_entropy(logits.reshape(-1, 1 + args.negatives),
                                               torch.zeros(logits.shape[0] * logits.shape[1], dtype=torch.long),
                                               reduction="none")
            mask = (pos > 0).reshape(-1).float()
            loss = (loss * mask).sum() / mask.sum()
            opt.zero_grad(); loss.backward(); opt.step()
            total += float(loss.detach())
        hr, ndcg = evaluate(model, seqs_idx, args.window, n_items, "valid")
        print(f"epoch {epoch:3d} loss {total:8.2f} valid HR@10 {hr:.4f} NDCG@10 {ndcg:.4f} ({time.time() - t0:.0f}s)")
        if ndcg > best:
            best, bad = ndcg, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= args.patience:
                break
    model.load_state_dict(best_state)
    hr, ndcg = evaluate(model, seqs_idx, args.window, n_items, "test")
    train_seconds = time.time() - t0
    print(f"test HR@10 {hr:.4f} NDCG@10 {ndcg:.4f}")

    os.makedirs(args.out, exist_ok=True)
    model.eval()
    example = torch.tensor([left_pad(seqs_idx[next(iter(seqs_idx))], args.window)] * 2)
    torch.onnx.export(model, (example,), os.path.join(args.out, "model.onnx"),
                      input_names=["item_seq"], output_names=["top_items", "top_scores", "scores"],
                      dynamic_axes={"item_seq": {0: "batch"}, "top_items": {0: "batch"},
                                    "top_scores": {0: "batch"}, "scores": {0: "batch"}},
                      opset_version=17, dynamo=False)
    with open(os.path.join(args.out, "items.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")

    # Parity: onnxruntime against PyTorch on real prefixes.
    import onnxruntime as ort
    sess = ort.InferenceSession(os.path.join(args.out, "model.onnx"), providers=["CPUExecutionProvider"])
    users = list(seqs_idx)[:256]
    x = np.array([left_pad(seqs_idx[u][:-1], args.window) for u in users], dtype=np.int64)
    onnx_items, onnx_scores, _ = sess.run(None, {"item_seq": x})
    with torch.no_grad():
        torch_items, torch_scores, _ = model(torch.from_numpy(x))
    max_diff = float(np.abs(onnx_scores - torch_scores.numpy()).max())
    same_top = float((onnx_items == torch_items.numpy()).all(axis=1).mean())
    print(f"parity: max |score diff| {max_diff:.2e}, identical top-{candidates} on {same_top:.1%} of rows")
    assert max_diff < 1e-4, "ONNX export does not match PyTorch"

    manifest = {
        "name": "sasrec-ml100k",
        "version": args.version,
        "kind": "full",
        "model_file": "model.onnx",
        "vocabulary_file": "items.txt",
        "n_items": n_items,
        "window": args.window,
        "k": args.k,
        "candidates": candidates,
        "inputs": [{"name": "item_seq", "dtype": "int64", "shape": ["batch", args.window]}],
        "outputs": [
            {"name": "top_items", "dtype": "int64", "shape": ["batch", candidates]},
            {"name": "top_scores", "dtype": "float32", "shape": ["batch", candidates]},
            {"name": "scores", "dtype": "float32", "shape": ["batch", n_items + 1]},
        ],
        "training": {"data": "MovieLens-100k (recbole_ml100k/ml-100k.inter)", "data_sha256": digest,
                     "script": "training/sasrec_ml100k.py", "args": vars(args)},
    }
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    metrics = {"protocol": "leave-one-out, full ranking over all items, seen items removed",
               "test_hr@10": round(hr, 4), "test_ndcg@10": round(ndcg, 4), "valid_ndcg@10": round(best, 4),
               "users": len(seqs), "items": n_items, "train_seconds": round(train_seconds, 1),
               "onnx_parity_max_abs_diff": max_diff}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
