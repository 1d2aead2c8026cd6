"""Forecast accuracy as the M5 competition scores it (numpy only, so CI can check it cheaply).

RMSSE (root mean squared scaled error) of one series: the forecast's mean squared error over the
horizon, divided by the mean squared one-step change of the series over its training history
(counted from its first non-zero observation), square-rooted. 1.0 means as good as a naive
"tomorrow = today" forecast is in-sample. WRMSSE weights each series' RMSSE by its share of sales
and, in M5, averages over the 12 aggregation levels of the Walmart hierarchy.
"""
import csv
from collections import defaultdict

import numpy as np

# The M5 hierarchy: each level's series are keyed by these columns of the bottom-level rows
# (None = the total). Names as in the M5 guidelines and `weights_evaluation.csv`.
M5_LEVELS = {
    "Level1": (), "Level2": ("state_id",), "Level3": ("store_id",), "Level4": ("cat_id",),
    "Level5": ("dept_id",), "Level6": ("state_id", "cat_id"), "Level7": ("state_id", "dept_id"),
    "Level8": ("store_id", "cat_id"), "Level9": ("store_id", "dept_id"), "Level10": ("item_id",),
    "Level11": ("state_id", "item_id"), "Level12": ("item_id", "store_id"),
}


def rmsse_scale(history):
    """Mean squared one-step change of `history` from its first non-zero value; NaN if it never sold
    or has fewer than two observations after that (such series cannot be scored)."""
    history = np.asarray(history, dtype=np.float64)
    nonzero = np.flatnonzero(history)
    if len(nonzero) == 0 or len(history) - nonzero[0] < 2:
        return float("nan")
    diffs = np.diff(history[nonzero[0]:])
    return float(np.mean(diffs ** 2))


def rmsse(history, actual, forecast):
    scale = rmsse_scale(history)
    if not scale > 0:
        return float("nan")
    err = np.asarray(actual, dtype=np.float64) - np.asarray(forecast, dtype=np.float64)
    return float(np.sqrt(np.mean(err ** 2) / scale))


def wrmsse(scores, weights):
    """Weighted RMSSE over the series that can be scored; the weights of those are renormalised."""
    scores, weights = np.asarray(scores, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(scores)
    return float(np.sum(scores[ok] * weights[ok]) / np.sum(weights[ok]))


def aggregate_m5(rows, value):
    """Sums `value(row)` of the bottom-level M5 rows (dicts with item_id, dept_id, cat_id, store_id,
    state_id) into every series of the 12 levels: {level: {key tuple: sum}}."""
    out = {level: defaultdict(float) for level in M5_LEVELS}
    for row in rows:
        v = value(row)
        for level, columns in M5_LEVELS.items():
            out[level][tuple(row[c] for c in columns) or ("Total",)] += v
    return out


def level_weights(totals):
    """Each level's series weighted by their share of the level's total (each level sums to 1)."""
    weights = {}
    for level, series in totals.items():
        total = sum(series.values())
        weights[level] = {key: v / total for key, v in series.items()}
    return weights


def read_m5_weights(path):
    """`weights_evaluation.csv` -> {level: {key tuple: (dollar_sales, weight)}}; keys are in
    M5_LEVELS' column order, as the file writes them."""
    out = defaultdict(dict)
    with open(path) as f:
        for r in csv.DictReader(f):
            level = r["Level_id"]
            parts = tuple(p for p in (r["Agg_Level_1"], r["Agg_Level_2"]) if p != "X")
            out[level][parts] = (float(r["Dollar_Sales"]), float(r["weight"]))
    return out
