"""Draws `longmem bench`'s latency against throughput: one line per model × mode, one point per
offered load (25/50/75/100% of that run's peak), p50 solid and p99 dashed.

    python scripts/plot_bench.py results/bench/bench.json   # writes results/bench/latency.png
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "results/bench/bench.json"
    with open(path) as f:
        report = json.load(f)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, run in enumerate(report["runs"]):
        name = f"{os.path.basename(run['model'])} {run['mode']}"
        x = [p["sustained_per_s"] for p in run["latency"]]
        color = f"C{i}"
        ax.plot(x, [p["p50_ms"] for p in run["latency"]], "o-", color=color, label=f"{name} p50")
        ax.plot(x, [p["p99_ms"] for p in run["latency"]], "s--", color=color, label=f"{name} p99")
    ax.axvline(report["passthrough_per_s"], color="grey", linestyle=":", label="passthrough ceiling")
    ax.set_xlabel("sustained events/s")
    ax.set_ylabel("end-to-end latency, ms (log)")
    ax.set_yscale("log")
    ax.set_title(f"longmem bench, {report['machine']}, commit {report['commit']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    out = os.path.join(os.path.dirname(path), "latency.png")
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
