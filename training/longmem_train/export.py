"""ONNX export of the `full` and `step` graphs, parity between them, and CPU cost per event."""
import hashlib
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.external_data_helper import set_external_data

from .data import left_pad
from .models import ChunkGraph, FullGraph, PrefillGraph, SASRec, StepGraph


RANKING = ("top_items", "top_scores")


def export(model, out_dir, candidates, rank_in_graph=False):
    """Writes model.onnx (full) and step.onnx; returns the step graph's state description, or None
    for a model without an exact step (it gets the full graph only). The graphs end at `scores`
    unless `rank_in_graph` keeps their TopK (`top_items`, `top_scores`): see `drop_ranking`."""
    model.eval()
    full = FullGraph(model, candidates)
    example = torch.ones(2, model.window, dtype=torch.long)
    torch.onnx.export(full, (example,), f"{out_dir}/model.onnx", input_names=["item_seq"],
                      output_names=["top_items", "top_scores", "scores"],
                      dynamic_axes={n: {0: "batch"} for n in ["item_seq", "top_items", "top_scores", "scores"]},
                      opset_version=17, dynamo=False,
                      do_constant_folding=False)  # folding would store transposed copies of shared weights
    if not rank_in_graph:
        drop_ranking(f"{out_dir}/model.onnx")
    if not getattr(model, "exact_step", True):
        share_weights(out_dir, ["model.onnx"])
        return None
    shapes = model.state_shapes(3)
    other = model.state_shapes(4)
    names = list(shapes)
    state = [torch.zeros(s) for s in shapes.values()]
    step = StepGraph(model, candidates)
    # The batch axis is the one that changes with the batch size.
    batch_axis = {n: next(i for i, (a, b) in enumerate(zip(shapes[n], other[n])) if a != b) for n in names}
    dyn = {"item": {0: "batch"}, "top_items": {0: "batch"}, "top_scores": {0: "batch"}, "scores": {0: "batch"}}
    for n in names:
        dyn[n] = {batch_axis[n]: "batch"}
        dyn[n + "_out"] = {batch_axis[n]: "batch"}
    torch.onnx.export(step, (torch.ones(3, dtype=torch.long), *state), f"{out_dir}/step.onnx",
                      input_names=["item", *names], output_names=["top_items", "top_scores", "scores", *[n + "_out" for n in names]],
                      dynamic_axes=dyn, opset_version=17, dynamo=False,
                      do_constant_folding=False)  # folding would store transposed copies of shared weights
    if not rank_in_graph:
        drop_ranking(f"{out_dir}/step.onnx")
    graphs = ["model.onnx", "step.onnx"]
    if hasattr(model, "prefill"):
        export_prefill(model, out_dir, names, batch_axis)
        graphs.append("prefill.onnx")
    if hasattr(model, "chunk"):
        export_chunk(model, out_dir, names, batch_axis, state)
        graphs.append("chunk.onnx")
    share_weights(out_dir, graphs)
    appends = getattr(model, "append_axes", {})
    return [
        {"name": n, "input": n, "output": n + "_out", "dtype": "float32",
         "shape": ["batch" if i == batch_axis[n] else d for i, d in enumerate(shapes[n])], "batch_axis": batch_axis[n],
         **({"append_axis": appends[n]} if n in appends else {})}
        for n in names
    ]


def next_state(spec, old, out):
    """A state after one step from the step graph's output `out`: the whole new state, or with the
    spec's `append_axis` the old one less its oldest entry along that axis, plus `out` (the daemon's
    rule, src/model/state.rs)."""
    axis = spec.get("append_axis")
    if axis is None:
        return out
    kept = np.take(old, np.arange(1, old.shape[axis]), axis=axis)
    return np.concatenate([kept, out], axis=axis)


def ranked_outputs(candidates, in_graph):
    """The manifest's entries for a graph's own ranking: none when the daemon ranks `scores`."""
    if not in_graph:
        return []
    return [{"name": "top_items", "dtype": "int64", "shape": ["batch", candidates]},
            {"name": "top_scores", "dtype": "float32", "shape": ["batch", candidates]}]


def drop_ranking(path):
    """Cuts a recommender graph's TopK and its outputs (`top_items`, `top_scores`) away, leaving
    `scores` for the daemon to rank: onnxruntime's TopK over 1,683 items was 45% of sasrec-ml100k's
    step graph on CPU, and the daemon picks the best k in one pass, leaving seen items out as it goes
    (docs/performance.md, "Ranking in the daemon"). Everything else, the weights included, stays as
    it was; a graph stored with external weights keeps pointing at them. Returns whether the graph
    changed."""
    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    outputs = [o for o in graph.output if o.name not in RANKING]
    if len(outputs) == len(graph.output):
        return False
    if not any(o.name == "scores" for o in outputs):
        raise ValueError(f"{path} has no `scores` output to rank from")
    del graph.output[:]
    graph.output.extend(outputs)
    # Keep the nodes the remaining outputs need, walking back from them (nodes are topologically sorted).
    needed = {o.name for o in outputs}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    for field in (graph.initializer, graph.value_info):
        unused = [t for t in field if t.name not in needed]
        for t in unused:
            field.remove(t)
    onnx.save(model, path)
    onnx.checker.check_model(path)       # by path: external weights resolve next to the graph
    return True


def export_prefill(model, out_dir, names, batch_axis):
    """Writes prefill.onnx: item_seq [B, W] -> the step state after the window, for models whose state
    is a function of the window. The daemon keeps such state in RAM only and rebuilds a missing one
    with this graph, one call per micro-batch."""
    model.eval()
    outputs = [n + "_out" for n in names]
    dyn = {"item_seq": {0: "batch"}, **{o: {batch_axis[n]: "batch"} for n, o in zip(names, outputs)}}
    example = torch.ones(2, model.window, dtype=torch.long)
    torch.onnx.export(PrefillGraph(model), (example,), f"{out_dir}/prefill.onnx", input_names=["item_seq"],
                      output_names=outputs, dynamic_axes=dyn, opset_version=17, dynamo=False,
                      do_constant_folding=False)


def chunk_positions(lengths, s1):
    """The chunk graph's `keys` [R, S] and `tails` [B, S-1] for users with `lengths` new items each
    (SASRec.chunk's pool: each user's S-1 cached slots, then all new items in order)."""
    b, keys, tails, first = len(lengths), [], [], 0
    for user, n in enumerate(lengths):
        seq = list(range(user * s1, (user + 1) * s1)) + list(range(b * s1 + first, b * s1 + first + n))
        keys.extend(seq[t:t + s1 + 1] for t in range(n))
        tails.append(seq[n:n + s1])
        first += n
    return np.array(keys, dtype=np.int64).reshape(-1, s1 + 1), np.array(tails, dtype=np.int64)


def chunk_manifest(model):
    """The manifest's `step.chunk` entry for the graph export_chunk writes."""
    return {"model_file": "chunk.onnx", "span": model.span, "items_input": "items", "keys_input": "keys",
            "tails_input": "tails"}


def export_chunk(model, out_dir, names, batch_axis, state):
    """Writes chunk.onnx: several new items per user in one call (SASRec.chunk); the daemon uses it
    for users with more than one event in a micro-batch."""
    model.eval()
    s1 = model.span - 1
    b = state[0].shape[batch_axis[names[0]]]
    lengths = [2, 0, 3][:b] + [1] * max(0, b - 3)
    keys, tails = chunk_positions(lengths, s1)
    items = torch.ones(sum(lengths), dtype=torch.long)
    outputs = [n + "_out" for n in names]
    dyn = {"items": {0: "rows"}, "keys": {0: "rows"}, "tails": {0: "batch"}, "scores": {0: "rows"},
           **{n: {batch_axis[n]: "batch"} for n in names}, **{o: {batch_axis[n]: "batch"} for n, o in zip(names, outputs)}}
    torch.onnx.export(ChunkGraph(model), (items, torch.from_numpy(keys), torch.from_numpy(tails), *state),
                      f"{out_dir}/chunk.onnx", input_names=["items", "keys", "tails", *names],
                      output_names=["scores", *outputs], dynamic_axes=dyn, opset_version=17, dynamo=False,
                      do_constant_folding=False)


def constants_to_initializers(graph, min_bytes):
    """Large Constant nodes (tensors the export computed once, such as SASRec's per-item first-layer
    keys and values) become initializers, so that share_weights stores them once, beside the weights."""
    kept = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and len(value.raw_data) >= min_bytes:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def share_weights(out_dir, graphs, weights="weights.bin", min_bytes=1024):
    """Moves the graphs' large initializers into one external `weights.bin`, each distinct tensor
    stored once: the full and step graphs share the item embeddings, which are most of a model's
    bytes (Amazon Games: 23,716 x 64 floats), so the model directory holds them once instead of
    twice. ONNX Runtime resolves the file relative to each graph."""
    offsets, blob = {}, bytearray()
    models = [onnx.load(os.path.join(out_dir, g)) for g in graphs]
    for model in models:
        constants_to_initializers(model.graph, min_bytes)
        for tensor in model.graph.initializer:
            raw = tensor.raw_data
            if len(raw) < min_bytes:
                continue
            key = hashlib.sha256(raw).hexdigest()
            if key not in offsets:
                blob.extend(b"\0" * (-len(blob) % 64))       # aligned, so the runtime can map it
                offsets[key] = len(blob)
                blob.extend(raw)
            set_external_data(tensor, weights, offset=offsets[key], length=len(raw))
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
    with open(os.path.join(out_dir, weights), "wb") as f:
        f.write(blob)
    for g, model in zip(graphs, models):
        onnx.save(model, os.path.join(out_dir, g))


def session(path, threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def empty_state(state_spec, users):
    """The step state of `users` users the model has seen nothing of, by name."""
    return {s["name"]: np.zeros([users if d == "batch" else d for d in s["shape"]], np.float32) for s in state_spec}


def run_steps(step_sess, state_spec, prefixes, with_state=False):
    """Feeds each prefix event by event through the step graph (batched across users; a user whose
    prefix is shorter simply keeps its state). Returns the last step's scores per user (and the
    final state by name, `with_state`)."""
    b = len(prefixes)
    state = empty_state(state_spec, b)
    longest = max(len(p) for p in prefixes)
    aligned = np.array([left_pad(p, longest) for p in prefixes], dtype=np.int64)
    scores = None
    for t in range(longest):
        items = aligned[:, t]
        active = items > 0
        if not active.any():
            continue
        feeds = {"item": np.where(active, items, 1), **state}
        out = step_sess.run(["scores", *[s["output"] for s in state_spec]], feeds)
        new_scores = out[0]
        scores = new_scores if scores is None else np.where(active[:, None], new_scores, scores)
        for s, out_s in zip(state_spec, out[1:]):
            new = next_state(s, state[s["name"]], out_s)
            mask = active.reshape([-1 if i == s["batch_axis"] else 1 for i in range(new.ndim)])
            state[s["name"]] = np.where(mask, new, state[s["name"]])
    return (scores, state) if with_state else scores


def by_length(cases):
    """Users ordered by prefix length: a batch is stepped as many times as its longest prefix, so
    batching users of similar length steps each one about once per item instead of once per item of
    the longest history in a random batch (ML-1M: 6,040 users, histories of 20 to 2,300 items)."""
    return sorted(cases, key=lambda u: (len(cases[u][0]), u))


def same_top_k(a, b, k):
    """Rows of two score matrices whose k best items are the same set."""
    top_a = np.sort(np.argsort(-a, axis=1, kind="stable")[:, :k], axis=1)
    top_b = np.sort(np.argsort(-b, axis=1, kind="stable")[:, :k], axis=1)
    return int((top_a == top_b).all(axis=1).sum())


def prefill_parity(out_dir, state_spec, cases, window, k=10, batch=256):
    """The state prefill.onnx builds from a user's last `window` items vs the state stepping their
    whole history leaves: largest difference in the filled cache slots, and the share of users whose
    next step ranks the same top-k from either state."""
    prefill = session(f"{out_dir}/prefill.onnx", 2)
    step = session(f"{out_dir}/step.onnx", 2)
    users = by_length(cases)
    same, max_diff = 0, 0.0
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        prefixes = [cases[u][0] for u in chunk]
        _, stepped = run_steps(step, state_spec, prefixes, with_state=True)
        x = np.array([left_pad(p, window) for p in prefixes], dtype=np.int64)
        built = dict(zip([s["name"] for s in state_spec], prefill.run([s["output"] for s in state_spec], {"item_seq": x})))
        filled = stepped["cache_mask"] > 0
        if not (filled == (built["cache_mask"] > 0)).all():
            raise AssertionError("prefill and step disagree on which cache slots are filled")
        for s in state_spec:
            if s["name"] == "cache_mask":
                continue
            # The filled slots: [B, S-1] spread over the tensor's batch and sliding axes.
            shape = [1] * stepped[s["name"]].ndim
            shape[s["batch_axis"]], shape[s["append_axis"]] = filled.shape
            slots = filled.reshape(shape)
            diff = np.where(slots, np.abs(stepped[s["name"]] - built[s["name"]]), 0.0)
            max_diff = max(max_diff, float(diff.max()))
        nxt = np.array([cases[u][1] for u in chunk], dtype=np.int64)
        a = step.run(["scores"], {"item": nxt, **stepped})[0][:, 1:]
        b = step.run(["scores"], {"item": nxt, **built})[0][:, 1:]
        same += same_top_k(a, b, k)
    return {"users": len(users), "same_top10_share": same / len(users), "max_abs_state_diff": max_diff}


def chunk_parity(out_dir, state_spec, cases, k=10, batch=64, longest=80, seed=0):
    """chunk.onnx vs step.onnx over the same histories: each user's first `longest` items are fed in
    bursts of random length (0 to 40, so users of one call have different lengths, some none) to the
    chunk graph, and one by one to the step graph. Returns the share of items answered with the same
    top-k, the largest score difference, and the largest state difference after the last burst."""
    chunk = session(f"{out_dir}/chunk.onnx", 2)
    step = session(f"{out_dir}/step.onnx", 2)
    s1 = next(s["shape"][s["append_axis"]] for s in state_spec if s["name"] == "cache_mask")
    rng = np.random.default_rng(seed)
    users = sorted(cases)
    same = rows = 0
    max_diff = max_state_diff = 0.0
    for start in range(0, len(users), batch):
        histories = [cases[u][0][:longest] for u in users[start:start + batch]]
        state = empty_state(state_spec, len(histories))
        fed = [0] * len(histories)
        chunk_scores = [[] for _ in histories]
        while any(f < len(h) for f, h in zip(fed, histories)):
            lengths = [min(int(rng.integers(0, 41)), len(h) - f) for f, h in zip(fed, histories)]
            keys, tails = chunk_positions(lengths, s1)
            if not keys.size:
                continue
            items = np.concatenate([h[f:f + n] for h, f, n in zip(histories, fed, lengths)]).astype(np.int64)
            out = chunk.run(["scores", *[s["output"] for s in state_spec]],
                            {"items": items, "keys": keys, "tails": tails, **state})
            first = 0
            for u, n in enumerate(lengths):
                chunk_scores[u].extend(out[0][first:first + n])
                first += n
                fed[u] += n
            state = {s["name"]: o for s, o in zip(state_spec, out[1:])}
        stepped = empty_state(state_spec, len(histories))
        for t in range(max(len(h) for h in histories)):
            active = np.array([t < len(h) for h in histories])
            items = np.array([h[t] if t < len(h) else 1 for h in histories], dtype=np.int64)
            out = step.run(["scores", *[s["output"] for s in state_spec]], {"item": items, **stepped})
            fed_now = np.flatnonzero(active)
            a, b = out[0][fed_now, 1:], np.stack([chunk_scores[u][t][1:] for u in fed_now])
            max_diff = max(max_diff, float(np.abs(a - b).max()))
            same += same_top_k(a, b, k)
            rows += len(fed_now)
            for s, o in zip(state_spec, out[1:]):
                new = next_state(s, stepped[s["name"]], o)
                keep = active.reshape([-1 if i == s["batch_axis"] else 1 for i in range(new.ndim)])
                stepped[s["name"]] = np.where(keep, new, stepped[s["name"]])
        for s in state_spec:
            max_state_diff = max(max_state_diff, float(np.abs(stepped[s["name"]] - state[s["name"]]).max()))
    return {"items": rows, "same_top10_share": same / rows, "max_abs_score_diff": max_diff,
            "max_abs_state_diff": max_state_diff}


def parity(out_dir, state_spec, cases, window, step_history, k=10, batch=256):
    """Step over each prefix vs full over the same prefix: share of users with the same top-k, and
    the largest score difference. `step_history` is how much of the prefix the step graph sees:
    "all" (its state covers the whole history) or "window" (the same last `window` items as full)."""
    full = session(f"{out_dir}/model.onnx", 2)
    step = session(f"{out_dir}/step.onnx", 2)
    users = by_length(cases)
    same, max_diff = 0, 0.0
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        prefixes = [cases[u][0] if step_history == "all" else cases[u][0][-window:] for u in chunk]
        x = np.array([left_pad(cases[u][0], window) for u in chunk], dtype=np.int64)
        full_scores = full.run(["scores"], {"item_seq": x})[0]
        step_scores = run_steps(step, state_spec, prefixes)
        fs, ss = full_scores[:, 1:], step_scores[:, 1:]
        max_diff = max(max_diff, float(np.abs(fs - ss).max()))
        same += same_top_k(fs, ss, k)
    return {"users": len(users), "same_top10_share": same / len(users), "max_abs_score_diff": max_diff}


def us_per_row(sess, outputs, feeds, rows, seconds):
    """µs per batch row of `sess.run(outputs, feeds)`, after one warm-up run, over `seconds`."""
    sess.run(outputs, feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(outputs, feeds)
        n += rows
    return round((time.perf_counter() - t0) / n * 1e6, 2)


def cost_per_event(out_dir, state_spec, window, n_items, seconds=2.0):
    """µs per event through onnxruntime on one thread, for full and step at batch 1 and 256 (the
    graphs alone: a graph ending at `scores` leaves the ranking to the daemon)."""
    full = session(f"{out_dir}/model.onnx", 1)
    step = session(f"{out_dir}/step.onnx", 1)
    rng = np.random.default_rng(0)
    result = {}
    for b in (1, 256):
        x = rng.integers(1, n_items + 1, (b, window)).astype(np.int64)
        feeds_full = {"item_seq": x}
        state = {s["name"]: rng.standard_normal([b if d == "batch" else d for d in s["shape"]]).astype(np.float32) * 0.1
                 for s in state_spec}
        if "cache_mask" in state:
            state["cache_mask"] = np.ones_like(state["cache_mask"])
        if "cache_items" in state:            # a full cache of real items, as two base-2048 digits
            ids = x[:, -state["cache_items"].shape[1] - 1:-1]
            state["cache_items"] = SASRec.id_digits(torch.from_numpy(ids)).numpy()
        feeds_step = {"item": x[:, -1], **state}
        for name, sess, feeds in (("full", full, feeds_full), ("step", step, feeds_step)):
            # What the daemon fetches: the graph's own ranking, or every score for it to rank.
            ranked = [o.name for o in sess.get_outputs() if o.name in RANKING] or ["scores"]
            outs = ranked + ([s["output"] for s in state_spec] if name == "step" else [])
            result[f"{name}_batch{b}_us_per_event"] = us_per_row(sess, outs, feeds, b, seconds)
    return result
