"""Adds the prefill graph to recommenders trained before it existed, from their own exported weights.

    python training/add_prefill.py models/sasrec-ml100k [models/sasrec-games ...]

The weights are read back from the directory's ONNX graphs (their initializers keep PyTorch's
names), so nothing is retrained: model.onnx and step.onnx compute exactly what they did. The
directory gains prefill.onnx (item_seq -> the step state after the window), the manifest's
`step.prefill`, and metrics.json's `prefill_parity` on the model's own test users.
"""
import argparse
import json
import os
import sys

import onnx
import torch
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from longmem_train import data as D                                          # noqa: E402
from longmem_train.export import export_prefill, prefill_parity, share_weights  # noqa: E402
from longmem_train.models import RECOMMENDERS                                 # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    args = p.parse_args()
    for model_dir in args.models:
        with open(os.path.join(model_dir, "model.json")) as f:
            manifest = json.load(f)
        a = manifest["training"]["args"]
        if not hasattr(RECOMMENDERS[a["model"]], "prefill"):
            sys.exit(f"{model_dir}: a {a['model']} model's state is not a function of its window; no prefill graph")
        ds = D.load(manifest["training"]["data"])
        if ds.sha256 != manifest["training"]["data_sha256"]:
            sys.exit(f"{model_dir}: the data at {manifest['training']['data']} is not what the model was trained on")
        span = a["span"] or 25
        model = RECOMMENDERS[a["model"]](manifest["n_items"], window=a["window"], dim=a["dim"], layers=a["layers"],
                                         heads=a["heads"], span=span, slots=a["slots"], dropout=a["dropout"],
                                         separate_output=a.get("separate_output", False))
        graph = onnx.load(os.path.join(model_dir, manifest["model_file"]))
        weights = {t.name[len("model."):]: torch.from_numpy(numpy_helper.to_array(t).copy())
                   for t in graph.graph.initializer if t.name.startswith("model.")}
        model.load_state_dict(weights, strict=True)
        model.eval()

        state_spec = manifest["step"]["state"]
        names = [s["name"] for s in state_spec]
        export_prefill(model, model_dir, names, {s["name"]: s["batch_axis"] for s in state_spec})
        share_weights(model_dir, [manifest["model_file"], manifest["step"]["model_file"], "prefill.onnx"])
        manifest["step"]["prefill"] = {"model_file": "prefill.onnx", "input": "item_seq"}
        with open(os.path.join(model_dir, "model.json"), "w") as f:
            json.dump(manifest, f, indent=2); f.write("\n")

        _train, _valid, test = D.split(ds)
        result = prefill_parity(model_dir, state_spec, test, manifest["window"])
        path = os.path.join(model_dir, "metrics.json")
        with open(path) as f:
            metrics = json.load(f)
        metrics["prefill_parity"] = result
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2); f.write("\n")
        print(model_dir, "prefill parity", result, flush=True)


if __name__ == "__main__":
    main()
