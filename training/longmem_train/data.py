"""Sequential-recommendation data: loading, the leave-one-out split, and training windows.

Any data set in the `user item` format (one interaction per line, in time order per user; the
SASRec authors' format) works through `load_user_item`; MovieLens-100k in RecBole atomic files
through `load_recbole`; the gSASRec authors' MovieLens-1M split through `load_gsasrec`. Items are re-indexed 1..n (0 is padding) in order of first appearance of
their original ids sorted as numbers when they are numbers.
"""
import hashlib
import os
from dataclasses import dataclass, field


@dataclass
class Dataset:
    name: str
    sequences: dict          # user -> [item index, ...] in time order
    vocab: list              # external item ids; vocab[i - 1] is item index i
    sha256: str
    # Users whose penultimate item is unknown (the gSASRec split): user -> their last item. They
    # train on the known prefix and are tested on the last item with that prefix as input.
    gap_targets: dict = field(default_factory=dict)

    @property
    def n_items(self):
        return len(self.vocab)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _index(name, raw, digest):
    ids = {i for s in raw.values() for i in s}
    vocab = sorted(ids, key=lambda x: (0, int(x), x) if x.isdigit() else (1, 0, x))
    index = {item: n + 1 for n, item in enumerate(vocab)}
    return Dataset(name, {u: [index[i] for i in s] for u, s in raw.items()}, vocab, digest)


def load_user_item(path):
    """`user item` per line, in time order per user (the SASRec data format)."""
    raw = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) < 2:
                raise ValueError(f"{path}:{n}: expected `user item`, got {line!r}")
            raw.setdefault(parts[0], []).append(parts[1])
    return _index(os.path.basename(path), raw, _sha256(path))


def load_recbole(directory):
    """MovieLens-100k as RecBole atomic files: ratings ordered by timestamp (ties in file order)."""
    path = os.path.join(directory, "ml-100k.inter")
    rows = []
    with open(path) as f:
        next(f)
        for n, line in enumerate(f):
            user, item, _rating, ts = line.rstrip("\n").split("\t")
            rows.append((user, float(ts), n, item))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    raw = {}
    for user, _ts, _n, item in rows:
        raw.setdefault(user, []).append(item)
    return _index("ml-100k", raw, _sha256(path))


def load_gsasrec(directory):
    """MovieLens-1M as split by the gSASRec authors. Only 512 users' sequences are complete (their
    validation and test items are both known); the other 5,528 users' penultimate item was never
    published, so they train on their prefix and are tested on their last item from that prefix:
    one item short of the authors' test input, so their figures are a lower bound on the authors'."""
    path = os.path.join(directory, "ml1m_partial_user_sequences.txt")
    raw, partial = {}, {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            user, kind, *items = line.split()
            if kind == "F":
                raw[user] = items
            elif kind == "P" and len(items) >= 3 and items[-2] == "?":
                raw[user] = items[:-2]
                partial[user] = items[-1]
            else:
                raise ValueError(f"{path}:{n}: expected `user F|P items...` with P rows ending `? item`")
    ds = _index("ml-1m", {**raw, **{f"\0{u}": [t] for u, t in partial.items()}}, _sha256(path))
    # The last items were indexed with the rest (a pseudo-user each), so every item has an index.
    ds.gap_targets = {u: ds.sequences.pop(f"\0{u}")[0] for u in partial}
    return ds


def load(spec):
    """`recbole:DIR`, `gsasrec:DIR` or a `user item` file."""
    if spec.startswith("recbole:"):
        return load_recbole(spec[len("recbole:"):])
    if spec.startswith("gsasrec:"):
        return load_gsasrec(spec[len("gsasrec:"):])
    return load_user_item(spec)


def left_pad(seq, window):
    seq = list(seq[-window:])
    return [0] * (window - len(seq)) + seq


def split(dataset):
    """Leave-one-out as in the SASRec paper: the last item is the test target, the one before it the
    validation target, the rest is training. Users with fewer than 3 interactions only train. A user
    with a gap target (see `load_gsasrec`) trains on all of their sequence and is only tested."""
    train, valid, test = {}, {}, {}
    for user, seq in dataset.sequences.items():
        if user in dataset.gap_targets:
            train[user] = seq
            test[user] = (seq, dataset.gap_targets[user])
            continue
        if len(seq) < 3:
            train[user] = seq
            continue
        train[user] = seq[:-2]
        valid[user] = (seq[:-2], seq[-2])
        test[user] = (seq[:-1], seq[-1])
    return train, valid, test


def with_validation_items(train, valid):
    """Each training sequence followed by its user's validation item: what a refit learns from once
    validation has chosen the number of epochs. The test items stay unseen."""
    return {u: list(valid[u][0]) + [valid[u][1]] if u in valid else seq for u, seq in train.items()}


def training_windows(train, window):
    """Every training sequence cut into chunks of `window + 1` (inputs and next-item targets)."""
    out = []
    for seq in train.values():
        for end in range(len(seq), 1, -window):
            out.append(left_pad(seq[max(0, end - window - 1):end], window + 1))
    return out
