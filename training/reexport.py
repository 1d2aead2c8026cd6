"""Re-exports trained recommenders' graphs from their own weights, under the current export
contract, without retraining.

    python training/reexport.py models/sasrec-ml100k [models/sasrec-games ...]

The weights are read back from the directory's full graph (its initializers keep PyTorch's names)
and every graph is written again: model.onnx, step.onnx, prefill.onnx and chunk.onnx where the model has them, and
weights.bin. The full graph computes what it did (checked: largest score difference against the old
graph on test users); the manifest's step state takes the current contract (e.g. `append_axis`: the
step graph returns only the newest cache entry), and metrics.json's parity, prefill parity and CPU
cost are measured again on the model's own test users. Test figures are the full graph's, so they
stand.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import onnx
import torch
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from longmem_train import data as D                                                   # noqa: E402
from longmem_train.data import left_pad                                               # noqa: E402
from longmem_train.export import (chunk_manifest, chunk_parity, cost_per_event, export, parity,  # noqa: E402
                                  prefill_parity, session)
from longmem_train.models import build                                                # noqa: E402
from longmem_train.provenance import environment                                      # noqa: E402


def full_scores(model_dir, cases, window, users=512):
    """The full graph's scores for the first `users` test users (in a fixed order)."""
    chosen = sorted(cases)[:users]
    x = np.array([left_pad(cases[u][0], window) for u in chosen], dtype=np.int64)
    return session(os.path.join(model_dir, "model.onnx"), 2).run(["scores"], {"item_seq": x})[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--keep-cost", action="store_true",
                   help="keep metrics.json's CPU cost (measure it apart, on an idle machine: training/measure_cost.py)")
    args = p.parse_args()
    for model_dir in args.models:
        with open(os.path.join(model_dir, "model.json")) as f:
            manifest = json.load(f)
        a = manifest["training"]["args"]
        ds = D.load(manifest["training"]["data"])
        if ds.sha256 != manifest["training"]["data_sha256"]:
            sys.exit(f"{model_dir}: the data at {manifest['training']['data']} is not what the model was trained on")
        model = build(a, manifest["n_items"])
        graph = onnx.load(os.path.join(model_dir, manifest["model_file"]))   # external weights resolved
        weights = {t.name[len("model."):]: torch.from_numpy(numpy_helper.to_array(t).copy())
                   for t in graph.graph.initializer if t.name.startswith("model.")}
        model.load_state_dict(weights, strict=True)
        model.eval()
        _train, _valid, test = D.split(ds)
        before = full_scores(model_dir, test, manifest["window"])

        # Exported beside the old graphs first, so a failure leaves the directory as it was.
        with tempfile.TemporaryDirectory() as tmp:
            rank_in_graph = "candidates" in manifest
            candidates = manifest.get("candidates", min(manifest["k"] + manifest["window"], manifest["n_items"]))
            state_spec = export(model, tmp, candidates, rank_in_graph)
            for name in os.listdir(tmp):
                shutil.copy(os.path.join(tmp, name), os.path.join(model_dir, name))
        after = full_scores(model_dir, test, manifest["window"])
        full_diff = float(np.abs(before[:, 1:] - after[:, 1:]).max())
        if full_diff > 1e-4:
            sys.exit(f"{model_dir}: the re-exported full graph scores differently (largest difference {full_diff})")

        manifest["step"]["state"] = state_spec
        if hasattr(model, "chunk"):
            manifest["step"]["chunk"] = chunk_manifest(model)
        manifest["training"]["reexported"] = {"script": "training/reexport.py", "environment": environment()}
        with open(os.path.join(model_dir, "model.json"), "w") as f:
            json.dump(manifest, f, indent=2); f.write("\n")

        path = os.path.join(model_dir, "metrics.json")
        with open(path) as f:
            metrics = json.load(f)
        metrics["parity"] = parity(model_dir, state_spec, test, manifest["window"], manifest["step"]["history"])
        if "prefill" in manifest["step"]:
            metrics["prefill_parity"] = prefill_parity(model_dir, state_spec, test, manifest["window"])
        if "chunk" in manifest["step"]:
            metrics["chunk_parity"] = chunk_parity(model_dir, state_spec, test)
        if not args.keep_cost:
            metrics["cpu_cost"] = cost_per_event(model_dir, state_spec, manifest["window"], manifest["n_items"])
            metrics["cpu_cost_measured_by"] = "training/reexport.py"
        metrics["reexport_full_graph_max_abs_score_diff"] = full_diff
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2); f.write("\n")
        print(model_dir, "full graph unchanged (largest difference", full_diff, ") parity", metrics["parity"],
              "prefill", metrics.get("prefill_parity"), "chunk", metrics.get("chunk_parity"), "cost", metrics["cpu_cost"], flush=True)


if __name__ == "__main__":
    main()
