"""Evaluation protocols, model-agnostic: `score(prefixes) -> scores [batch, n_items + 1]`.

- `sampled`: the SASRec paper's protocol: the target ranked among 100 items drawn uniformly from
  those the user has not interacted with, on at most 10,000 sampled users.
- `full`: the target ranked among all items, the user's already seen items removed.
- `full_recent`: the same with only the items of the user's last `window` events removed: what the
  daemon answers with `model.exclude_seen` (it remembers a bounded window, not the whole history),
  and so the figure `longmem eval` checks its live output against.
HR@10 is the share of targets ranked in the top 10; NDCG@10 gives 1/log2(rank + 2) to those.
"""
import math

import numpy as np

from .data import left_pad


def _metrics(ranks, k=10):
    ranks = np.asarray(ranks)
    hit = ranks < k
    return {"hr@10": float(hit.mean()), "ndcg@10": float((hit / np.log2(ranks + 2)).mean()), "users": int(len(ranks))}


def evaluate(score, cases, n_items, window, protocol, seed=42, max_users=10_000, negatives=100, batch=256):
    """`cases`: user -> (prefix, target). Returns {"hr@10", "ndcg@10", "users"}."""
    rng = np.random.default_rng(seed)
    users = sorted(cases, key=lambda u: (len(u), u))
    if protocol == "sampled" and len(users) > max_users:
        users = list(rng.choice(users, max_users, replace=False))
    ranks = []
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        prefixes = [cases[u][0] for u in chunk]
        x = np.array([left_pad(p, window) for p in prefixes], dtype=np.int64)
        scores = score(x)
        for row, u in enumerate(chunk):
            prefix, target = cases[u]
            s = scores[row]
            if protocol == "sampled":
                seen = set(prefix) | {target, 0}
                cand = []
                while len(cand) < negatives:
                    t = int(rng.integers(1, n_items + 1))
                    if t not in seen:
                        cand.append(t)
                ranks.append(int((s[cand] > s[target]).sum()))
            elif protocol in ("full", "full_recent"):
                s = s.copy()
                s[0] = -np.inf
                removed = prefix if protocol == "full" else prefix[-window:]
                seen = [i for i in set(removed) if i != target]
                s[seen] = -np.inf
                ranks.append(int((s > s[target]).sum()))
            else:
                raise ValueError(protocol)
    return _metrics(ranks)


def complete_users(test, dataset):
    """The test cases whose input is the user's whole prefix: all of them except gap users (the
    gSASRec split's 5,528 users tested one item short, see `data.load_gsasrec`)."""
    return {u: case for u, case in test.items() if u not in dataset.gap_targets}


def popularity_scorer(train, n_items):
    """Scores every item by its training count: the popularity baseline."""
    counts = np.zeros(n_items + 1, dtype=np.float32)
    for seq in train.values():
        np.add.at(counts, seq, 1)

    def score(x):
        return np.broadcast_to(counts, (x.shape[0], n_items + 1))

    return score


def ndcg_check():
    """A one-line sanity check of the formula: rank 0 gives 1, rank 1 gives 1/log2(3)."""
    m = _metrics([0, 1])
    assert math.isclose(m["ndcg@10"], (1 + 1 / math.log2(3)) / 2)
