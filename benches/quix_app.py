"""longmem's recommendation job written as a plain Quix Streams app, the baseline `quix_baseline.py`
measures longmem against: per-user state in Quix's RocksDB store with its changelog topic, the
model's full graph through onnxruntime, one event at a time (how a Python stream processor runs a
model unless one writes batching oneself).

    python benches/quix_app.py BOOTSTRAP GROUP INPUT_TOPIC OUTPUT_TOPIC MODEL_DIR STATE_DIR

For each click or purchase: the item joins the user's window (the model's window length, items the
model does not know left out), the window is scored, and the top k items not in the window are
produced to OUTPUT_TOPIC, keyed by the user, as longmem does.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from quixstreams import Application


def main():
    bootstrap, group, input_topic, output_topic, model_dir, state_dir = sys.argv[1:7]
    with open(os.path.join(model_dir, "model.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(model_dir, manifest["vocabulary_file"])) as f:
        items = f.read().split()
    index = {item: i + 1 for i, item in enumerate(items)}  # line i is index i + 1; 0 pads
    window, k = manifest["window"], manifest["k"]
    options = ort.SessionOptions()
    # One thread each, as longmem runs (intra_threads = 1): comparable CPU per event.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(os.path.join(model_dir, manifest["model_file"]), options,
                                   providers=["CPUExecutionProvider"])

    def recommend(event, state):
        recent = state.get("window", [])
        item = index.get(event.get("item_id"))
        if item is not None:
            recent = (recent + [item])[-window:]
            state.set("window", recent)
        row = np.zeros((1, window), dtype=np.int64)
        if recent:
            row[0, window - len(recent):] = recent
        # The graph returns every item's score, as longmem takes it; the best k unseen, with numpy.
        scores = session.run(["scores"], {"item_seq": row})[0][0]
        scores[0] = -np.inf
        scores[recent] = -np.inf
        best = np.argpartition(-scores, k)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        picked = [(int(i), float(scores[i])) for i in best]
        return {"user_id": event["user_id"], "model": {"name": manifest["name"], "version": manifest["version"]},
                "items": [{"item_id": items[i - 1], "score": s} for i, s in picked]}

    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      state_dir=state_dir, use_changelog_topics=True, loglevel="WARNING")
    events = app.topic(input_topic, value_deserializer="json")
    recommendations = app.topic(output_topic, value_serializer="json")
    sdf = app.dataframe(events)
    sdf = sdf.filter(lambda e: e.get("event_type") in ("click", "purchase"))
    sdf = sdf.apply(recommend, stateful=True)
    sdf.to_topic(recommendations)
    app.run()


if __name__ == "__main__":
    main()
