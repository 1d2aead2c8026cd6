"""Writes a model directory's card (README.md) from its model.json and metrics.json, so every number
in a card is the one its training run measured.

    python training/model_card.py models/sasrec-games [models/... ...]

Anything below the line `<!-- notes -->` of an existing card is kept: that is where people write
what the numbers do not say.
"""
import json
import os
import sys

NOTES = "<!-- notes -->"

ARCHITECTURE = {
    "sasrec": "SASRec-style Transformer: {layers} pre-norm self-attention blocks, d = {dim}, {heads} heads, "
              "feed-forward {ff}, GELU, dropout {dropout}; item embeddings (init N(0, 0.02)) shared between input "
              "and output. Positions enter as an ALiBi recency bias instead of absolute position embeddings and each "
              "layer attends to the last {span} positions only, so the `step` graph's per-layer key/value cache is "
              "exact: `full` over the last {window} items equals `step` over the whole history.",
    "gru4rec": "GRU4Rec-style recurrent model: item embedding (d = {dim}, shared between input and output) -> GRU "
               "cell -> layer norm, dropout {dropout}. The `step` state is the GRU's hidden vector, which carries the "
               "whole history; `full` reads the last {window} items.",
    "memory": "The long-term-memory recommender: one self-attention block over the last {span} items (exact "
              "key/value cache) plus {slots} per-user key-value memory slots that every event updates with a gated "
              "erase-and-add write (MIMN/NTM style); the output reads the slots by attention. The state stays a few "
              "kilobytes whatever the history length; `full` reads the last {window} items.",
}

DATA = {
    "Video.txt": "Amazon Games reviews as sequences (the SASRec paper's own `sasrec_games/Video.txt`: 31,013 users, "
                 "23,715 items, 287,107 interactions)",
    "recbole_ml100k": "MovieLens-100k (`recbole_ml100k/ml-100k.inter`: 943 users, 1,682 items, 100,000 ratings in "
               "timestamp order)",
    "ml1m_gsasrec": "MovieLens-1M as split by the gSASRec authors (`ml1m_gsasrec_split`: 6,040 users, 3,416 items); only "
            "512 users' sequences are complete: they are validated and tested as usual. The other 5,528 users' "
            "penultimate item was never published: they train on their known prefix and are tested on their last item "
            "from that prefix, one item short of the authors' test input",
}


def provenance(m):
    """The card's line on what trained the model, from the manifest's record of it."""
    env = m["training"].get("environment")
    if not env:
        return "not recorded (trained before manifests recorded it)"
    commit = (env.get("git_commit") or "unknown")[:10]
    dirty = " with uncommitted changes to training/" if env.get("git_dirty") else ""
    return (f"commit `{commit}`{dirty}; Python {env['python']}, torch {env['torch']}, onnx {env['onnx']}, "
            f"onnxruntime {env['onnxruntime']}, numpy {env['numpy']}")


def fmt(x, digits=4):
    return "–" if x is None else f"{x:.{digits}f}"


def cost_origin(metrics):
    if metrics.get("cpu_cost_measured_by") == "training/reexport.py":
        return "measured by `training/reexport.py` when the graphs were re-exported, possibly while other work shared the machine"
    if metrics.get("cpu_cost_measured_by"):
        return "re-measured by `training/measure_cost.py` on an otherwise idle machine"
    return "measured at the end of training, possibly while other work shared the machine"


def data_description(manifest):
    data = manifest["training"]["data"]
    for key, text in DATA.items():
        if key in data:
            return text
    return f"`{data}`"


def learning_rate_schedule(a):
    """How the learning rate moved; nothing to say for a constant one (and older manifests)."""
    if a.get("schedule", "constant") == "cosine":
        return f" falling to 0 along a half cosine over {a['epochs']} epochs"
    return ""


def schedule(a, r, valid_users):
    """How long it trained, and on what: early stopping on validation, then a refit if asked for."""
    refit = r.get("refit")
    threads = f"{a['threads']} CPU thread(s)"
    if refit and not r["epochs"]:
        return (f"no validation run: trained on the training and validation items for {refit['epochs']} epochs "
                f"(a count an earlier validation run chose), {refit['train_seconds'] / 60:.1f} min on {threads}")
    cap = f"cap {a['max_minutes']:g} min" if a["max_minutes"] > 0 else "no time cap"
    text = (f"early stopping on validation NDCG@10 (full ranking, {valid_users}, patience {a['patience']}, "
            f"{cap}): {r['epochs']} epochs, {r['train_seconds'] / 60:.1f} min on {threads}")
    if refit:
        text += (f"; then refitted on the training and validation items for {refit['epochs']} epochs (as validation "
                 f"chose), {refit['train_seconds'] / 60:.1f} min: the weights here are the refit's")
    return text


def recommender_card(m, r):
    a = m["training"]["args"]
    kind = a["model"]
    span = a["span"] or {"sasrec": 25, "memory": 8}.get(kind, 1)
    arch = ARCHITECTURE[kind].format(layers=a["layers"], dim=a["dim"], heads=a["heads"], ff=2 * a["dim"],
                                     dropout=a["dropout"], span=span, window=a["window"], slots=a["slots"])
    if a.get("positions") == "learned":
        arch = (f"SASRec as published: {a['layers']} pre-norm self-attention blocks, d = {a['dim']}, {a['heads']} heads, "
                f"feed-forward {2 * a['dim']}, GELU, dropout {a['dropout']}; learned absolute position embeddings over the "
                f"whole {a['window']}-item window, so no key/value cache can be stepped exactly: full graph only")
    if a.get("separate_output"):
        arch += "; items scored with an output embedding table of their own"
    step = m.get("step")
    per = "training sequence" if a.get("negative_draw") == "sequence" else "batch"
    if a.get("loss") == "gbce":
        negatives = f"gBCE (t = {a['gbce_t']}), {a['negatives']} uniform negatives per {per}"
    elif a["negatives"] <= 0:
        negatives = "softmax over every item"
    else:
        negatives = f"sampled softmax, {a['negatives']} uniform negatives per {per}"
    if "candidates" in m:
        answer = f"the top {m['candidates']} candidates and all scores"
        step_answer = f"new state + top {m['candidates']}"
    else:
        answer = "every item's score, which the daemon ranks"
        step_answer = "new state + every item's score"
    if step:
        state = ", ".join(f"`{s['name']}` {s['shape']}" for s in step["state"])
        graphs = (f"`model.onnx` (full: `item_seq` [batch, {m['window']}] → {answer}), "
                  f"`step.onnx` (`item` [batch] + state → {step_answer})"
                  f"{'' if 'prefill' not in step else ', `prefill.onnx` (`item_seq` → the state after the window)'}"
                  f"{'' if 'chunk' not in step else ', `chunk.onnx` (several items per user + state → scores for each item and the new state)'}"
                  f"; {'all' if 'prefill' in step or 'chunk' in step else 'both'} read `weights.bin`")
    else:
        graphs = (f"`model.onnx` only (full: `item_seq` [batch, {m['window']}] → {answer}); the daemon runs it with "
                  f"`model.mode = \"full\"`")
    valid_users = "every user" if a['valid_users'] <= 0 else f"{a['valid_users']} users at most"
    lines = [
        f"# {m['name']}",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {arch} |",
        f"| graphs | {graphs} |",
        *([f"| state per user | {r['state_bytes_per_user']:,} bytes: {state} |"] if step else []),
        f"| data | {data_description(m)}; sha256 `{r['data_sha256'][:16]}…` |",
        "| split | leave-one-out: last item test, second-to-last validation, the rest training |",
        f"| training | {negatives}, Adam {a['lr']}{learning_rate_schedule(a)}, batch {a['batch']}, length-bucketed; {schedule(a, r, valid_users)} |",
        f"| command | `python training/train.py --model {kind} --data {a['data']} --out {{dir}} --name {m['name']}"
        f"{'' if m['version'] == '1' else ' --version ' + m['version']}` (+ the non-default flags in `model.json`) |",
        f"| trained with | {provenance(m)} |",
        "",
        "## Results (test split, through the exported ONNX graph)",
        "",
        "| protocol | model HR@10 | model NDCG@10 | popularity HR@10 | popularity NDCG@10 |",
        "|---|---|---|---|---|",
        f"| full ranking, seen items removed ({r['full']['users']:,} users) | **{fmt(r['full']['hr@10'])}** | "
        f"**{fmt(r['full']['ndcg@10'])}** | {fmt(r['popularity_full']['hr@10'])} | {fmt(r['popularity_full']['ndcg@10'])} |",
        f"| SASRec protocol, 100 sampled unseen negatives ({r['sampled']['users']:,} users) | **{fmt(r['sampled']['hr@10'])}** | "
        f"**{fmt(r['sampled']['ndcg@10'])}** | {fmt(r['popularity_sampled']['hr@10'])} | {fmt(r['popularity_sampled']['ndcg@10'])} |",
    ]
    if "full_complete_users" in r:
        q = r["full_complete_users"]
        lines.append(f"| full ranking, only the {q['users']:,} users whose test input is complete | **{fmt(q['hr@10'])}** | "
                     f"**{fmt(q['ndcg@10'])}** | – | – |")
    if "full_recent" in r:
        lines.append(
            f"| full ranking, only the last {m['window']} items removed, as the daemon serves (`longmem eval` checks it live) | "
            f"**{fmt(r['full_recent']['hr@10'])}** | **{fmt(r['full_recent']['ndcg@10'])}** | "
            f"{fmt(r['popularity_full_recent']['hr@10'])} | {fmt(r['popularity_full_recent']['ndcg@10'])} |")
    if not step:
        return "\n".join(lines)
    c, p = r["cpu_cost"], r["parity"]
    history = ("each test user's whole prefix" if step["history"] == "all" else
               f"the last {a['window']} items of each test user's prefix (the state carries more history than `full` reads)")
    lines += [
        "",
        "## Parity and cost",
        "",
        f"- `step` fed event by event over {history} vs `full` on the same prefix: the same top 10 for "
        f"{round(p['same_top10_share'] * p['users']):,} of {p['users']:,} users, largest score difference {p['max_abs_score_diff']:.1e}.",
        f"- CPU per event through onnxruntime on one thread: full {c['full_batch1_us_per_event']:,} µs at batch 1, "
        f"{c['full_batch256_us_per_event']:,} µs at batch 256; step {c['step_batch1_us_per_event']:,} µs at batch 1, "
        f"{c['step_batch256_us_per_event']:,} µs at batch 256 ({cost_origin(r)}).",
    ]
    if "prefill_parity" in r:
        q = r["prefill_parity"]
        lines.append(
            f"- `prefill.onnx` (the state after a window, in one call; the daemon keeps this state in RAM, not in the store, "
            f"and rebuilds a missing one with it) vs stepping each test user's whole prefix: the next step ranks the same "
            f"top 10 from either state for {round(q['same_top10_share'] * q['users']):,} of {q['users']:,} users, "
            f"largest difference in the filled cache slots {q['max_abs_state_diff']:.1e}.")
    if "chunk_parity" in r:
        q = r["chunk_parity"]
        lines.append(
            f"- `chunk.onnx` (a user's burst of events in one micro-batch, in one call) vs `step` one item at a time, each "
            f"test user's first 80 items fed in bursts of 0 to 40: the same top 10 for {round(q['same_top10_share'] * q['items']):,} "
            f"of {q['items']:,} items, largest score difference {q['max_abs_score_diff']:.1e}, largest state difference "
            f"after the last burst {q['max_abs_state_diff']:.1e}.")
    return "\n".join(lines)


def forecaster_card(m, r):
    a = m["training"]["args"]
    rows = [("LSTM (this model)", r["lstm"]), ("seasonal naive (last week repeated)", r["seasonal_naive"]),
            ("simple exponential smoothing", r["exponential_smoothing"])]
    c = r["cpu_cost"]
    state = ", ".join(f"`{s['name']}` {s['shape']}" for s in m["step"]["state"])
    lines = [
        f"# {m['name']}",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | LSTM cell (hidden {a['hidden']}) over daily demand scaled by the series' running mean, with the "
        "day of the week; two heads read the LSTM and the weekly profile kept in the state (each weekday's last and "
        f"average demand): the expected demand of each of the next {m['horizon']} days, and quantiles "
        f"{m['quantiles']} of the cumulative demand over the next 1..{m['horizon']} days (non-crossing by construction) |",
        f"| graphs | `model.onnx` (full: the last {m['window']} days of `demand` and `day_of_week` → `mean`, `quantiles`), "
        "`step.onnx` (one day + state → new state + forecast); both read `weights.bin` |",
        f"| state per SKU × location | {r['state_bytes_per_series']:,} bytes: {state} |",
        f"| data | SupplyGraph daily sales orders in units (`supplygraph/homogeneous/Temporal_Data/Unit/Sales_Order.csv`, "
        f"{r['series']} products × 221 days); sha256 `{r['data_sha256'][:16]}…` |",
        f"| split | test: the last {r['test_days']} days ({r['test_period'][0]}..{r['test_period'][1]}), one forecast per series "
        f"from the last training day (as in M5); the {a['horizon']} days before choose the number of epochs, then the model is refitted on all days before the test |",
        f"| training | squared error of the daily means + pinball loss of the cumulative quantiles, both in units of each "
        f"series' mean demand; {a['replicas']} replicas per series per epoch starting on random days (0..{a['max_start']}); "
        f"Adam {a['lr']}: {r['epochs']} epochs, {r['train_seconds'] / 60:.1f} min in all |",
        f"| command | `python training/forecast.py --data {a['data']} --out {{dir}}` |",
        f"| trained with | {provenance(m)} |",
        "",
        f"## Accuracy on the {r['test_days']} held-out days",
        "",
        "RMSSE as M5 defines it (error over the horizon scaled by the series' in-sample one-day change, from its first "
        "sale; `training/longmem_train/accuracy.py`, checked against the official M5 files by "
        "`training/tests/test_accuracy.py`). WRMSSE weights each series by its units sold in the last 28 training days "
        f"(M5 uses dollar sales, which SupplyGraph does not have). {r['scored_series']} of {r['series']} series can be scored.",
        "",
        "| forecast | mean RMSSE | WRMSSE (units) | series better than seasonal naive |",
        "|---|---|---|---|",
    ]
    for name, v in rows:
        lines.append(f"| {name} | {fmt(v['mean_rmsse'])} | {fmt(v['wrmsse_units'])} | {v['series_better_than_seasonal_naive']} |")
    lines += [
        "",
        f"Cumulative-demand intervals (every series, every horizon 1..{m['horizon']}): the 5–95% interval holds the "
        f"truth {r['lstm']['coverage_90'] * 100:.1f}% of the time (nominal 90%), the 25–75% interval "
        f"{r['lstm']['coverage_50'] * 100:.1f}% (nominal 50%).",
        "",
        "## Parity and cost",
        "",
        f"- `step` fed day by day vs `full` over the same {m['window']} days, at {r['parity']['origins']:,} (series, origin) pairs: "
        f"largest difference {r['parity']['max_relative_diff']:.1e} relative to the series' largest quantile.",
        f"- CPU per forecast through onnxruntime on one thread: full {c['full_batch1_us_per_event']:,} µs at batch 1, "
        f"{c['full_batch256_us_per_event']:,} µs at batch 256; step {c['step_batch1_us_per_event']:,} µs at batch 1, "
        f"{c['step_batch256_us_per_event']:,} µs at batch 256 ({cost_origin(r)}).",
    ]
    return "\n".join(lines)


def write_card(directory):
    with open(os.path.join(directory, "model.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(directory, "metrics.json")) as f:
        metrics = json.load(f)
    card = forecaster_card(manifest, metrics) if manifest.get("kind") == "forecaster" else recommender_card(manifest, metrics)
    card = card.replace("{dir}", directory.rstrip("/"))
    path = os.path.join(directory, "README.md")
    notes = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if NOTES in old:
            notes = old[old.index(NOTES):]
    with open(path, "w") as f:
        f.write(card + "\n\n" + (notes or NOTES + "\n"))


if __name__ == "__main__":
    for d in sys.argv[1:]:
        write_card(d)
        print("wrote", os.path.join(d, "README.md"))
