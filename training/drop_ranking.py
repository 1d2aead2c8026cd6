"""Cuts the TopK out of already exported model directories, so the daemon ranks their `scores`
itself (what `train.py` now exports unless `--rank-in-graph`): model.onnx and step.onnx lose
`top_items` and `top_scores`, model.json stops naming them; weights, state and scores are unchanged.

    python training/drop_ranking.py models/sasrec-ml100k [models/... ...]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from longmem_train.export import RANKING, drop_ranking  # noqa: E402


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for model_dir in sys.argv[1:]:
        path = os.path.join(model_dir, "model.json")
        with open(path) as f:
            manifest = json.load(f)
        graphs = [manifest["model_file"]] + ([manifest["step"]["model_file"]] if "step" in manifest else [])
        changed = [g for g in graphs if drop_ranking(os.path.join(model_dir, g))]
        manifest.pop("candidates", None)
        manifest["outputs"] = [o for o in manifest["outputs"] if o["name"] not in RANKING]
        if "step" in manifest:
            manifest["step"]["outputs"] = [o for o in manifest["step"]["outputs"] if o not in RANKING]
        with open(path, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        print(f"{model_dir}: {', '.join(changed) or 'nothing'} cut to `scores`")


if __name__ == "__main__":
    main()
