"""Re-measures a model directory's CPU cost per event (onnxruntime, one thread, batch 1 and 256) and
updates its metrics.json. Training runs measure it too, but usually while other work shares the
machine; run this on an otherwise idle machine for the numbers to report.

    python training/measure_cost.py models/sasrec-games models/memory-games ...
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from longmem_train.export import cost_per_event  # noqa: E402


def main():
    for directory in sys.argv[1:]:
        with open(os.path.join(directory, "model.json")) as f:
            manifest = json.load(f)
        path = os.path.join(directory, "metrics.json")
        with open(path) as f:
            metrics = json.load(f)
        if manifest.get("kind") == "forecaster":
            from forecast import cost_per_event as forecaster_cost
            cost = forecaster_cost(directory, manifest["step"]["state"], manifest["window"])
        else:
            cost = cost_per_event(directory, manifest["step"]["state"], manifest["window"], manifest["n_items"])
        metrics["cpu_cost"] = cost
        metrics["cpu_cost_measured_by"] = "training/measure_cost.py"
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2); f.write("\n")
        print(directory, cost, flush=True)


if __name__ == "__main__":
    main()
