"""Train, evaluate and export one recommender.

    python training/train.py --model sasrec --data ../shared/data/seqrec/sasrec_games/Video.txt --out models/sasrec
    python training/train.py --model gru4rec --data recbole:../shared/data/seqrec/recbole_ml100k --out models/gru4rec-ml100k

`--data` takes any `user item` file (one interaction per line, in time order per user), or
`recbole:DIR` for MovieLens-100k, or `gsasrec:DIR` for the gSASRec split of MovieLens-1M. The model directory receives model.onnx (full graph), step.onnx,
model.json (the daemon's manifest), items.txt, metrics.json.

The defaults are the best configuration models/README.md's ablation found: softmax over every item,
early stopping on validation NDCG@10 (full ranking), and for SASRec a refit on the training and
validation items for the epochs validation chose (`--no-refit` ships the validated epoch instead).
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from longmem_train import data as D                                  # noqa: E402
from longmem_train.evaluate import complete_users, evaluate, popularity_scorer  # noqa: E402
from longmem_train.export import chunk_manifest, chunk_parity, cost_per_event, export, parity, prefill_parity, ranked_outputs, session  # noqa: E402
from longmem_train.provenance import environment                   # noqa: E402
from longmem_train.models import RECOMMENDERS, build, training_loss  # noqa: E402


def length_buckets(windows, lengths, batch_size, pool_batches=64):
    """Shuffled batches of similar length, each cut to its longest sequence's real items.

    Most users are short (Amazon Games: 9 items on average in a 50-item window), so padding would be
    most of the work. Cutting leading padding is exact for every model here: padded keys are masked
    out of attention, and padding leaves the recurrent and memory states untouched."""
    perm = torch.randperm(len(windows))
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(perm), pool):
        chunk = perm[start:start + pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    for i in torch.randperm(len(batches)).tolist():
        idx = batches[i]
        longest = max(int(lengths[idx].max()), 2)
        yield windows[idx][:, -longest:]


# The models a refit is shown to help; the others refit only when asked (--refit).
REFIT_BY_DEFAULT = {"sasrec"}


def learning_rate(base, schedule, progress, total_epochs):
    """The learning rate after `progress` epochs (fractional). A cosine schedule is a function of
    progress through the --epochs budget, not of the validation run, so a refit that trains the
    epochs validation chose follows the curve the chosen weights were trained on."""
    if schedule == "constant":
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress / total_epochs)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(RECOMMENDERS), required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", help="model name in the manifest (default: MODEL-DATASET)")
    p.add_argument("--version", default="1")
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--span", type=int, default=0, help="attention span (default: sasrec 25, memory 8)")
    p.add_argument("--slots", type=int, default=4, help="memory slots of the memory model")
    p.add_argument("--positions", choices=["alibi", "learned"], default="alibi",
                   help="sasrec: alibi (recency bias over a sliding span: exact step cache) or learned (the original "
                        "SASRec's absolute positions over the whole window; full graph only, for comparison)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rank-in-graph", action="store_true",
                   help="keep the graphs' TopK (top_items, top_scores) instead of ending at `scores` for the daemon "
                        "to rank: for a GPU, where ranking on the device saves copying every score back")
    p.add_argument("--loss", choices=["softmax", "gbce"], default="softmax",
                   help="softmax: cross-entropy against the sampled negatives (or every item, --negatives 0); "
                        "gbce: gSASRec's generalised binary cross-entropy against the sampled negatives")
    p.add_argument("--negatives", type=int, default=None,
                   help="softmax: 0 (the default) compares with every item, which ranked best in models/README.md's "
                        "ablation; N > 0 with N uniformly sampled items (drawn as --negative-draw says), cheaper per step on "
                        "very large catalogues. gbce: the sampled negatives (default 256)")
    p.add_argument("--negative-draw", choices=["batch", "sequence"], default=None,
                   help="sampled negatives: one draw shared by the batch, or one for each training sequence. "
                        "Default: sequence for softmax (+14%% to +40%% NDCG@10 on two data sets), batch for gbce "
                        "(the only draw it learned from; models/README.md, the objective ablation)")
    p.add_argument("--gbce-t", type=float, default=0.75, help="gBCE's calibration t in [0, 1] (0: plain BCE)")
    p.add_argument("--separate-output", action="store_true",
                   help="score items with an embedding table of their own instead of the input embeddings")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="cosine: the learning rate falls from --lr to 0 along a half cosine over --epochs epochs "
                        "(a refit follows the same curve for the epochs it trains)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop validating after this long, a safety bound (0, the default: none; early stopping on "
                        "--patience, or --epochs, ends training, so the model that ships has converged)")
    p.add_argument("--valid-users", type=int, default=5000,
                   help="users sampled for early stopping (0: every user with a validation item)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="after validation picks the epoch count, train again from the same start on the training "
                        "and validation items for that many epochs (the test items stay unseen). Default: on for "
                        "sasrec, where it ranked 10-14%% better on two data sets; off for gru4rec and memory, where "
                        "it was within noise (models/README.md, the ablation's \"Refit\" section)")
    p.add_argument("--refit-epochs", type=int, default=0,
                   help="skip the validation run and refit for this many epochs (a count an earlier run chose)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    if args.refit is False and args.refit_epochs > 0:
        p.error("--refit-epochs trains a refit and nothing else: leave out --no-refit")
    if args.refit is None:
        args.refit = args.model in REFIT_BY_DEFAULT
    if args.negative_draw is None:
        args.negative_draw = "sequence" if args.loss == "softmax" else "batch"
    if args.negatives is None:
        args.negatives = 256 if args.loss == "gbce" else 0
    if args.loss == "gbce" and args.negatives <= 0:
        p.error("--loss gbce compares with sampled negatives: give --negatives > 0")
    if not 0.0 <= args.gbce_t <= 1.0:
        p.error("--gbce-t is a share: between 0 and 1")
    if args.epochs < 1:
        p.error("--epochs is the most epochs to train: give at least 1")
    if args.refit_epochs < 0:
        p.error("--refit-epochs is a number of epochs: give one above 0 (or leave it out)")
    if args.positions == "learned" and args.model != "sasrec":
        p.error("--positions learned is an option of --model sasrec")

    # Recorded before training: the code that runs is the code checked out now, whatever is
    # committed or edited while it trains.
    trained_with = environment()
    random.seed(args.seed); np.random.seed(args.seed); torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    ds = D.load(args.data)
    train, valid, test = D.split(ds)
    name = args.name or f"{args.model}-{ds.name.split('.')[0].lower()}"
    print(f"{name}: users={len(ds.sequences)} items={ds.n_items}", flush=True)
    rng = random.Random(args.seed)
    n_valid = len(valid) if args.valid_users <= 0 else min(args.valid_users, len(valid))
    valid_sample = {u: valid[u] for u in rng.sample(sorted(valid), n_valid)}

    def torch_scores(x):
        with torch.no_grad():
            return model.scores(model.encode(torch.from_numpy(x))[:, -1]).numpy()

    def start(sequences):
        """A fresh model from the seed, and an epoch function over `sequences`' training windows: a
        refit starts where the validation run started and differs only in the data it reads."""
        torch.manual_seed(args.seed)
        model = build(vars(args), ds.n_items)
        windows = torch.tensor(D.training_windows(sequences, args.window))
        lengths = (windows > 0).sum(1)
        # Each batch's summed loss is divided by the average number of predictions per batch, so every
        # prediction weighs the same whatever the length of the batch it landed in.
        per_batch = float((lengths - 1).clamp(min=0).sum()) / math.ceil(len(windows) / args.batch)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        print(f"training windows={len(windows)}", flush=True)

        def epoch(done):
            """One epoch, after `done` epochs of this model (where the learning rate's schedule stands)."""
            model.train()
            total = 0.0
            batches = list(length_buckets(windows, lengths, args.batch))
            for i, batch in enumerate(batches):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(args.lr, args.schedule, done + i / len(batches), args.epochs)
                loss_sum, _ = training_loss(model, batch, args)
                loss = loss_sum / per_batch
                opt.zero_grad(); loss.backward(); opt.step()
                total += float(loss.detach())
            model.eval()
            return total
        return model, epoch

    # `--refit-epochs` brings its count of epochs: no validation run then.
    validated = args.refit_epochs <= 0
    refitting = args.refit or not validated
    if validated:
        model, run_epoch = start(train)
    best, best_state, bad, t0, epochs, best_epoch = -1.0, None, 0, time.time(), 0, 0
    for epoch in range(args.epochs if validated else 0):
        total = run_epoch(epoch)
        v = evaluate(torch_scores, valid_sample, ds.n_items, args.window, "full")
        epochs = epoch + 1
        print(f"epoch {epoch:3d} loss {total:9.2f} valid(full) HR@10 {v['hr@10']:.4f} NDCG@10 {v['ndcg@10']:.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)
        if v["ndcg@10"] > best:
            best, bad, best_epoch = v["ndcg@10"], 0, epochs
            best_state = {k: t.clone() for k, t in model.state_dict().items()}
        else:
            bad += 1
        out_of_time = args.max_minutes > 0 and time.time() - t0 > args.max_minutes * 60
        if bad >= args.patience or out_of_time:
            break
    train_seconds = time.time() - t0
    refit = None
    if refitting:
        # The validation item is each user's most recent training signal, the closest in time to
        # the test item; a production model would learn from it too. Its count of epochs is the one
        # validation chose, since nothing is left to validate on.
        refit_epochs = args.refit_epochs or best_epoch
        model, run_epoch = start(D.with_validation_items(train, valid))
        t1 = time.time()
        for epoch in range(refit_epochs):
            total = run_epoch(epoch)
            print(f"refit epoch {epoch:3d} loss {total:9.2f} ({time.time() - t1:.0f}s)", flush=True)
        refit = {"epochs": refit_epochs, "train_seconds": round(time.time() - t1, 1)}
    else:
        model.load_state_dict(best_state)
    model.eval()

    os.makedirs(args.out, exist_ok=True)
    candidates = min(args.k + args.window, ds.n_items)
    state_spec = export(model, args.out, candidates, args.rank_in_graph)
    with open(os.path.join(args.out, "items.txt"), "w") as f:
        f.write("\n".join(ds.vocab) + "\n")

    # Test metrics through the exported graph: what the daemon serves.
    full = session(os.path.join(args.out, "model.onnx"), args.threads)

    def onnx_scores(x):
        return full.run(["scores"], {"item_seq": x})[0]

    results = {}
    for protocol in ("sampled", "full", "full_recent"):
        results[protocol] = evaluate(onnx_scores, test, ds.n_items, args.window, protocol)
        results[f"popularity_{protocol}"] = evaluate(popularity_scorer(train, ds.n_items), test, ds.n_items, args.window, protocol)
        print(protocol, results[protocol], "popularity", results[f"popularity_{protocol}"], flush=True)
    if ds.gap_targets:
        # Also the figure on the users whose test input is complete, comparable with earlier cards.
        results["full_complete_users"] = evaluate(onnx_scores, complete_users(test, ds), ds.n_items, args.window, "full")
        print("full (complete users)", results["full_complete_users"], flush=True)
    # SASRec's state covers its whole receptive field; the recurrent models' state summarises more
    # history than the full graph's window, so parity is checked on the window's items.
    step_history = "all" if args.model == "sasrec" else "window"
    if state_spec is not None:
        results["parity"] = parity(args.out, state_spec, test, args.window, step_history)
        print("parity", results["parity"], flush=True)
        if hasattr(model, "prefill"):
            results["prefill_parity"] = prefill_parity(args.out, state_spec, test, args.window)
            print("prefill parity", results["prefill_parity"], flush=True)
        if hasattr(model, "chunk"):
            results["chunk_parity"] = chunk_parity(args.out, state_spec, test)
            print("chunk parity", results["chunk_parity"], flush=True)
        results["cpu_cost"] = cost_per_event(args.out, state_spec, args.window, ds.n_items)
        print("cpu cost", results["cpu_cost"], flush=True)
        results["state_bytes_per_user"] = sum(4 * int(np.prod([d for d in s["shape"] if d != "batch"])) for s in state_spec)
    results.update({"train_seconds": round(train_seconds, 1), "epochs": epochs,
                    "data": args.data, "data_sha256": ds.sha256})
    if epochs:
        results.update({"valid_full_ndcg@10": round(best, 4), "best_epoch": best_epoch})
    if refit:
        results["refit"] = refit

    manifest = {
        "name": name, "version": args.version, "kind": "full", "model_file": "model.onnx",
        "vocabulary_file": "items.txt", "n_items": ds.n_items, "window": args.window, "k": args.k,
        **({"candidates": candidates} if args.rank_in_graph else {}),
        "inputs": [{"name": "item_seq", "dtype": "int64", "shape": ["batch", args.window]}],
        "outputs": [*ranked_outputs(candidates, args.rank_in_graph),
                    {"name": "scores", "dtype": "float32", "shape": ["batch", ds.n_items + 1]}],
        **({"step": {"model_file": "step.onnx", "item_input": "item", "history": step_history, "state": state_spec,
                     "outputs": [o["name"] for o in ranked_outputs(candidates, args.rank_in_graph)] + ["scores"],
                     **({"prefill": {"model_file": "prefill.onnx", "input": "item_seq"}} if hasattr(model, "prefill") else {}),
                     **({"chunk": chunk_manifest(model)} if hasattr(model, "chunk") else {})}}
           if state_spec is not None else {}),
        "training": {"data": args.data, "data_sha256": ds.sha256, "script": "training/train.py", "args": vars(args),
                     "environment": trained_with},
    }
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(manifest, f, indent=2); f.write("\n")
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2); f.write("\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
