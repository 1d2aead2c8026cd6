"""Train, evaluate and export the demand forecaster on the SupplyGraph daily sales orders.

    python training/forecast.py --data ../shared/data/supply/supplygraph/homogeneous --out models/demand-supplygraph

The last 28 days are held out for the test; the 28 days before them choose the number of epochs
(early stopping on validation RMSSE), then the model is refitted on everything before the test.
Reported against seasonal-naive and simple exponential smoothing: RMSSE per series (M5's measure,
see longmem_train/accuracy.py), its mean and its unit-weighted mean (WRMSSE), and how often the
cumulative-demand intervals cover the truth. The model directory receives model.onnx (the last
`--window` days -> forecast), step.onnx (state + one day -> new state + forecast), model.json,
series.txt and metrics.json.
"""
import argparse
import csv
import datetime as dt
import json
import os
import random
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from longmem_train.accuracy import rmsse, wrmsse                        # noqa: E402
from longmem_train.data import _sha256                                 # noqa: E402
from longmem_train.export import session, share_weights, us_per_row    # noqa: E402
from longmem_train.provenance import environment                      # noqa: E402
from longmem_train.forecaster import (DemandLSTM, ForecastFullGraph,   # noqa: E402
                                      ForecastStepGraph, calibrate, forecast_loss)


def load_supplygraph(directory):
    """Daily sales orders in units: (product names, dates, demand [products, days])."""
    path = os.path.join(directory, "Temporal_Data", "Unit", "Sales_Order.csv")
    with open(path) as f:
        rows = list(csv.reader(f))
    products = rows[0][1:]
    dates = [dt.datetime.strptime(r[0][:10], "%Y-%m-%d").date() for r in rows[1:]]
    demand = np.array([[float(v) if v.strip() else 0.0 for v in r[1:len(products) + 1]] for r in rows[1:]]).T
    if (demand < 0).any():
        raise ValueError(f"{path}: negative sales orders")
    return products, dates, demand, _sha256(path)


def seasonal_naive(history, horizon, season=7):
    last = history[-season:]
    return np.resize(last, horizon)


def exponential_smoothing(history, horizon):
    """Simple exponential smoothing, alpha chosen by in-sample one-step squared error."""
    start = np.flatnonzero(history)
    series = history[start[0]:] if len(start) else history
    best = (float("inf"), series[-1])
    for alpha in np.linspace(0.02, 1.0, 50):
        level, sse = series[0], 0.0
        for y in series[1:]:
            sse += (y - level) ** 2
            level = alpha * y + (1 - alpha) * level
        best = min(best, (sse, level), key=lambda b: b[0])
    return np.full(horizon, best[1])


def train_model(args, demand, dow, targets_end, epochs, log):
    """Trains on origins whose horizon ends before `targets_end`. With `epochs` None, stops early on
    the validation origin `targets_end` and returns the best epoch count too."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = DemandLSTM(horizon=args.horizon, hidden=args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-5)
    d = torch.tensor(demand[:, :targets_end], dtype=torch.float32)
    w = torch.tensor(dow[:targets_end], dtype=torch.long).expand(len(demand), -1)
    series_scale = d.mean(dim=1, keepdim=True).clamp(min=1.0).repeat(args.replicas, 1)
    best, best_state, best_epoch, bad = float("inf"), None, 0, 0
    for epoch in range(epochs or args.max_epochs):
        model.train()
        # Every series several times, each starting on a random day (earlier days are padding), so
        # the model learns to forecast from short histories and from long ones.
        starts = rng.integers(0, args.max_start + 1, size=(args.replicas, len(demand)))
        batch_d = d.repeat(args.replicas, 1)
        batch_w = w.repeat(args.replicas, 1).clone()
        for r, row in enumerate(starts.reshape(-1)):
            batch_w[r, :row] = -1
            batch_d[r, :row] = 0
        states = model.run(batch_d, batch_w)
        loss = forecast_loss(model, states, batch_d, batch_w >= 0, targets_end, series_scale)
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if epochs is not None:
            continue
        score = evaluate(model, demand, dow, targets_end, args.horizon)["mean_rmsse"]
        if score < best - 1e-4:
            best, best_epoch, bad = score, epoch + 1, 0
            best_state = {k: t.clone() for k, t in model.state_dict().items()}
        else:
            bad += 1
        if epoch % 10 == 0:
            log(f"epoch {epoch:4d} loss {loss.item():.4f} validation mean RMSSE {score:.4f} (best {best:.4f} at {best_epoch})")
        if bad >= args.patience:
            break
    if epochs is None:
        model.load_state_dict(best_state)
    model.eval()
    return model, best_epoch


def forecast(model, demand, dow, origin):
    """Mean [series, horizon] and cumulative quantiles [series, horizon, Q] after day origin - 1."""
    with torch.no_grad():
        d = torch.tensor(demand[:, :origin], dtype=torch.float32)
        w = torch.tensor(dow[:origin], dtype=torch.long).expand(len(demand), -1)
        last = [s[:, -1] for s in model.run(d, w)]
        mean, q = model.heads(last[0], *last[2:])
    return mean.numpy(), q.numpy()


def evaluate(model, demand, dow, origin, horizon, quantiles=None):
    """RMSSE of the forecast made after day origin - 1 for days origin .. origin + horizon - 1."""
    mean, q = forecast(model, demand, dow, origin)
    actual = demand[:, origin:origin + horizon]
    scores = [rmsse(demand[i, :origin], actual[i], mean[i]) for i in range(len(demand))]
    out = {"mean_rmsse": float(np.nanmean(scores)), "rmsse": scores}
    if quantiles is not None:
        cum = np.cumsum(actual, axis=1)
        ok = np.isfinite(scores)
        levels = list(quantiles)
        for lo, hi in ((0.05, 0.95), (0.25, 0.75)):
            a, b = levels.index(lo), levels.index(hi)
            inside = (cum >= q[:, :, a] - 1e-6) & (cum <= q[:, :, b] + 1e-6)
            out[f"coverage_{int(round((hi - lo) * 100))}"] = float(inside[ok].mean())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="SupplyGraph's homogeneous/ folder")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="demand-supplygraph")
    p.add_argument("--version", default="1")
    p.add_argument("--horizon", type=int, default=28)
    p.add_argument("--test-days", type=int, default=28)
    p.add_argument("--window", type=int, default=56, help="days the full graph reads")
    p.add_argument("--hidden", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-epochs", type=int, default=600)
    p.add_argument("--patience", type=int, default=60)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--max-start", type=int, default=56, help="latest random start day of a training replica")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    # Recorded before training: the code that runs is the code checked out now, whatever is
    # committed or edited while it trains.
    trained_with = environment()
    random.seed(args.seed); np.random.seed(args.seed); torch.set_num_threads(args.threads)

    products, dates, demand, digest = load_supplygraph(args.data)
    dow = np.array([d.weekday() for d in dates])
    test_origin = len(dates) - args.test_days
    valid_origin = test_origin - args.horizon
    print(f"{args.name}: {len(products)} series x {len(dates)} days ({dates[0]}..{dates[-1]}); "
          f"test {dates[test_origin]}..{dates[-1]}", flush=True)

    t0 = time.time()
    chosen, best_epochs = train_model(args, demand, dow, valid_origin, None, lambda m: print(m, flush=True))
    _, predicted = forecast(chosen, demand, dow, valid_origin)
    spread = calibrate(chosen.quantiles, predicted, np.cumsum(demand[:, valid_origin:test_origin], axis=1))
    print(f"best epochs {best_epochs}; quantile spread {spread}; refitting on every day before the test", flush=True)
    model, _ = train_model(args, demand, dow, test_origin, best_epochs, print)
    model.spread.copy_(torch.tensor(spread))
    train_seconds = time.time() - t0

    # Test: one forecast per series made after the last training day, as in M5.
    history, actual = demand[:, :test_origin], demand[:, test_origin:test_origin + args.horizon]
    lstm = evaluate(model, demand, dow, test_origin, args.horizon, model.quantiles)
    baselines = {
        "seasonal_naive": [rmsse(history[i], actual[i], seasonal_naive(history[i], args.horizon)) for i in range(len(products))],
        "exponential_smoothing": [rmsse(history[i], actual[i], exponential_smoothing(history[i], args.horizon)) for i in range(len(products))],
    }
    # Weights: each series' share of units sold in the last 28 training days (M5 uses dollar sales,
    # which SupplyGraph does not have).
    weights = history[:, -28:].sum(axis=1)
    scored = int(np.isfinite(lstm["rmsse"]).sum())
    results = {"series": len(products), "scored_series": scored, "test_days": args.test_days,
               "test_period": [str(dates[test_origin]), str(dates[-1])]}
    for name, scores in [("lstm", lstm["rmsse"]), *baselines.items()]:
        results[name] = {"mean_rmsse": round(float(np.nanmean(scores)), 4),
                         "wrmsse_units": round(wrmsse(scores, weights), 4),
                         "series_better_than_seasonal_naive": int(np.nansum(np.array(scores) < np.array(baselines["seasonal_naive"])))}
    results["lstm"].update({k: round(v, 4) for k, v in lstm.items() if k.startswith("coverage")})
    results["per_series_rmsse"] = {p_: {"lstm": _r(a), "seasonal_naive": _r(b), "exponential_smoothing": _r(c)}
                                   for p_, a, b, c in zip(products, lstm["rmsse"], *baselines.values())}
    print(json.dumps({k: v for k, v in results.items() if k != "per_series_rmsse"}, indent=1), flush=True)

    os.makedirs(args.out, exist_ok=True)
    state_spec = export(model, args.out, args.window)
    results["parity"] = parity(args.out, state_spec, demand[:, :test_origin], dow[:test_origin], args.window)
    print("parity", results["parity"], flush=True)
    results["cpu_cost"] = cost_per_event(args.out, state_spec, args.window)
    print("cpu cost", results["cpu_cost"], flush=True)
    results.update({"state_bytes_per_series": sum(4 * int(np.prod([d for d in s["shape"] if d != "batch"])) for s in state_spec),
                    "train_seconds": round(train_seconds, 1), "epochs": best_epochs, "quantile_spread": spread, "data_sha256": digest})
    with open(os.path.join(args.out, "series.txt"), "w") as f:
        f.write("\n".join(products) + "\n")
    manifest = {
        "name": args.name, "version": args.version, "kind": "forecaster", "model_file": "model.onnx",
        "bucket": "day", "horizon": args.horizon, "quantiles": list(model.quantiles), "window": args.window,
        "inputs": [{"name": "demand", "dtype": "float32", "shape": ["batch", args.window]},
                   {"name": "day_of_week", "dtype": "int64", "shape": ["batch", args.window],
                    "note": "0 = Monday, -1 = padding (left)"}],
        "outputs": [{"name": "mean", "dtype": "float32", "shape": ["batch", args.horizon],
                     "note": "expected demand of each of the next days"},
                    {"name": "quantiles", "dtype": "float32", "shape": ["batch", args.horizon, len(model.quantiles)],
                     "note": "quantiles of the cumulative demand over the next 1..horizon days"}],
        "step": {"model_file": "step.onnx", "inputs": ["demand", "day_of_week"], "state": state_spec,
                 "outputs": ["mean", "quantiles"]},
        "training": {"data": args.data, "data_sha256": digest, "script": "training/forecast.py", "args": vars(args),
                     "environment": trained_with},
    }
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(manifest, f, indent=2); f.write("\n")
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2); f.write("\n")


def _r(x):
    return None if not np.isfinite(x) else round(float(x), 4)


def export(model, out_dir, window):
    names = list(model.state_shapes(1))
    torch.onnx.export(ForecastFullGraph(model), (torch.ones(2, window), torch.zeros(2, window, dtype=torch.long)),
                      f"{out_dir}/model.onnx", input_names=["demand", "day_of_week"], output_names=["mean", "quantiles"],
                      dynamic_axes={n: {0: "batch"} for n in ["demand", "day_of_week", "mean", "quantiles"]},
                      opset_version=17, dynamo=False, do_constant_folding=False)
    state = [torch.zeros(s) for s in model.state_shapes(3).values()]
    dyn = {n: {0: "batch"} for n in ["demand", "day_of_week", "mean", "quantiles", *names, *[n + "_out" for n in names]]}
    torch.onnx.export(ForecastStepGraph(model), (torch.ones(3), torch.zeros(3, dtype=torch.long), *state),
                      f"{out_dir}/step.onnx", input_names=["demand", "day_of_week", *names],
                      output_names=["mean", "quantiles", *[n + "_out" for n in names]],
                      dynamic_axes=dyn, opset_version=17, dynamo=False, do_constant_folding=False)
    share_weights(out_dir, ["model.onnx", "step.onnx"], min_bytes=256)
    return [{"name": n, "input": n, "output": n + "_out", "dtype": "float32",
             "shape": ["batch", *s[1:]], "batch_axis": 0} for n, s in model.state_shapes(1).items()]


def step_through(step, state_spec, demand, dow):
    """Feeds [series, days] day by day through the step graph; returns the last outputs."""
    b = len(demand)
    state = {s["name"]: np.zeros([b, *s["shape"][1:]], dtype=np.float32) for s in state_spec}
    for t in range(demand.shape[1]):
        out = step.run(None, {"demand": demand[:, t].astype(np.float32),
                              "day_of_week": np.full(b, dow[t], dtype=np.int64), **state})
        state = {s["name"]: v for s, v in zip(state_spec, out[2:])}
    return out[0], out[1]


def parity(out_dir, state_spec, demand, dow, window):
    """The full graph over the last `window` days vs the step graph fed the same days one by one,
    at every day of the training period (each series, each possible forecast origin)."""
    full, step = session(f"{out_dir}/model.onnx"), session(f"{out_dir}/step.onnx")
    worst, origins = 0.0, 0
    for end in range(window, demand.shape[1] + 1, 7):
        d, w = demand[:, end - window:end], dow[end - window:end]
        f_mean, f_q = full.run(None, {"demand": d.astype(np.float32),
                                      "day_of_week": np.tile(w, (len(d), 1)).astype(np.int64)})
        s_mean, s_q = step_through(step, state_spec, d, w)
        scale = np.maximum(1.0, np.abs(f_q).max(axis=(1, 2)))[:, None]
        worst = max(worst, float((np.abs(f_mean - s_mean) / scale).max()), float((np.abs(f_q - s_q).max(axis=2) / scale).max()))
        origins += len(d)
        if (np.diff(f_q, axis=2) < 0).any() or (np.diff(f_q, axis=1) < 0).any():
            raise AssertionError("quantiles cross (across levels or along the horizon)")
    return {"origins": origins, "max_relative_diff": worst}


def cost_per_event(out_dir, state_spec, window, seconds=2.0):
    full, step = session(f"{out_dir}/model.onnx", 1), session(f"{out_dir}/step.onnx", 1)
    rng = np.random.default_rng(0)
    result = {}
    for b in (1, 256):
        d = rng.gamma(1.0, 100.0, (b, window)).astype(np.float32)
        w = np.tile(np.arange(window) % 7, (b, 1)).astype(np.int64)
        state = {s["name"]: np.zeros([b, *s["shape"][1:]], dtype=np.float32) for s in state_spec}
        feeds = {"full": (full, {"demand": d, "day_of_week": w}),
                 "step": (step, {"demand": d[:, -1], "day_of_week": w[:, -1], **state})}
        for name, (sess, feed) in feeds.items():
            result[f"{name}_batch{b}_us_per_event"] = us_per_row(sess, None, feed, b, seconds)
    return result


if __name__ == "__main__":
    main()
