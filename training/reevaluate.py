"""Re-evaluates exported recommenders through their ONNX graph and adds the results to metrics.json.

    python training/reevaluate.py models/sasrec-ml100k [models/gru4rec-ml100k ...] [--protocol full_recent]

For a protocol added after a model was trained (its metrics.json is updated in place; nothing else
changes). `full` on a split with unpublished test inputs (ML-1M's gSASRec split) also refreshes the
figure on the users whose test input is complete, as training does. The data set and split come from the model's own manifest, so the figures are on the same
test users as the rest of its card.

    python training/reevaluate.py models/sasrec-ml1m --protocol full --one-short

`--one-short` also tests the complete users with their last input item removed, the way the split
tests every other user: the two figures side by side say what the unpublished item costs.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from longmem_train import data as D                               # noqa: E402
from longmem_train.evaluate import complete_users, evaluate, popularity_scorer  # noqa: E402
from longmem_train.export import session                          # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--protocol", default="full_recent", choices=["sampled", "full", "full_recent"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--one-short", action="store_true",
                   help="with --protocol full on a split with gap users: also test the complete users one input item short")
    args = p.parse_args()
    for model_dir in args.models:
        with open(os.path.join(model_dir, "model.json")) as f:
            manifest = json.load(f)
        ds = D.load(manifest["training"]["data"])
        if ds.sha256 != manifest["training"]["data_sha256"]:
            sys.exit(f"{model_dir}: the data at {manifest['training']['data']} is not what the model was trained on")
        train, _valid, test = D.split(ds)
        full = session(os.path.join(model_dir, manifest["model_file"]), args.threads)

        def onnx_scores(x):
            return full.run(["scores"], {"item_seq": x})[0]

        window = manifest["window"]
        result = evaluate(onnx_scores, test, ds.n_items, window, args.protocol)
        baseline = evaluate(popularity_scorer(train, ds.n_items), test, ds.n_items, window, args.protocol)
        path = os.path.join(model_dir, "metrics.json")
        with open(path) as f:
            metrics = json.load(f)
        metrics[args.protocol] = result
        metrics[f"popularity_{args.protocol}"] = baseline
        if args.protocol == "full" and ds.gap_targets:
            # As train.py does: the figure on the users whose test input is complete beside it.
            metrics["full_complete_users"] = evaluate(onnx_scores, complete_users(test, ds), ds.n_items, window, "full")
            print(model_dir, "full (complete users)", metrics["full_complete_users"], flush=True)
            if args.one_short:
                # Same users, same targets, the item before the target withheld from the input (it stays
                # out of the ranking's removed items too, as a gap user's unknown item does).
                short = {u: (prefix[:-1], target) for u, (prefix, target) in complete_users(test, ds).items()}
                metrics["full_complete_users_one_short"] = evaluate(onnx_scores, short, ds.n_items, window, "full")
                print(model_dir, "full (complete users, one item short)",
                      metrics["full_complete_users_one_short"], flush=True)
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2); f.write("\n")
        print(model_dir, args.protocol, result, "popularity", baseline, flush=True)


if __name__ == "__main__":
    main()
