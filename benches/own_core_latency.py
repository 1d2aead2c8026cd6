"""The daemon on a core of its own, the broker and the load on the other: latency at fractions of
the daemon's peak, the nearest this two-core machine comes to a broker and producers on other
machines.

    .tools/venv/bin/python benches/own_core_latency.py [--model models/sasrec-ml100k] [--events 120000]
        [--fractions 0.25,0.5] [--seconds 10] [--fetch-wait-ms 20] [--brokers HOST:PORT]

`longmem bench` runs its load generator inside the daemon's process, so on two cores the daemon
shares a core with the producer or the broker. Here the release daemon (`longmem run`, as
deployed) is pinned to core 0; tansu, this script and its paced producer to core 1. With
`--brokers` (a Kafka on other machines) nothing but the load shares the machine with the daemon.
On this VM tansu and the load on one core carry less than a quarter of the daemon's peak
(docs/performance.md, "One produce round trip per batch").

1. Peak: `--events` MovieLens-100k clicks, spread over about 20,000 users (each real user's
   ratings dealt round-robin to 21 users), are on the broker before the daemon starts; the peak is
   their count over the time from the first consumed to the last (`longmem_events_consumed_total`,
   read every 50 ms).
2. Live: for each fraction, a paced producer offers that share of the peak for `--seconds`, on the
   same topics (the users' memories are warm). The daemon's own end-to-end histogram (produced →
   recommendation acknowledged) is read after the first second and at the end of each phase: the
   share of events answered within 20, 50 and 100 ms, and p50/p99 interpolated within its buckets.

Needs confluent-kafka and a release build (cargo build --release).
"""
import argparse
import json
import os
import subprocess
import tempfile
import threading
import time

from bench_support import (REPO, broker, click, create_topics, free_port, metric, metrics_page, movielens_events,
                           produce_all, produce_paced, series_sum, stop, write_daemon_config)

HISTOGRAM = "longmem_end_to_end_latency_seconds"
CONSUMED = "longmem_events_consumed_total"
DAEMON_CORE, LOAD_CORE = 0, 1


def reading(addr):
    """(the daemon's end-to-end histogram as {upper bound in s: cumulative count}, all series summed;
    events consumed), from one read of its /metrics page."""
    page = metrics_page(addr)
    if page is None:
        raise SystemExit(f"the daemon's metrics ({addr}) do not answer")
    counts = {}
    for line in page.splitlines():
        if line.startswith(HISTOGRAM + "_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            counts[bound] = counts.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts, series_sum(page, CONSUMED)


def quantile(counts, q):
    """The q-quantile of a cumulative histogram {bound: count}, linear within its bucket."""
    bounds = sorted(counts)
    total = counts[bounds[-1]]
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for b in bounds:
        if counts[b] >= rank:
            if b == float("inf"):
                return lower
            return lower + (b - lower) * (rank - below) / max(counts[b] - below, 1e-9)
        lower, below = b, counts[b]
    return lower


def deal(events):
    """MovieLens-100k's 943 users dealt round-robin to 21 users each: about 20,000 users."""
    seen = {}
    for user, item, ts in events:
        n = seen.get(user, 0)
        seen[user] = n + 1
        yield f"{user}.{n % 21}", item, ts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/sasrec-ml100k")
    p.add_argument("--mode", default="step")
    p.add_argument("--events", type=int, default=120_000, help="events preloaded for the peak")
    p.add_argument("--fractions", default="0.25,0.5")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--fetch-wait-ms", type=int, default=20, help="the daemon consumer's fetch.wait.max.ms")
    p.add_argument("--linger-ms", type=int, default=5,
                   help="the load's producer linger (longmem bench's is 5 ms; part of the end-to-end latency)")
    p.add_argument("--brokers", help="an existing Kafka (host:port) to run against; default: tansu on the load's core")
    p.add_argument("--binary", default=os.path.join(REPO, "target/release/longmem"))
    args = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores: one for the daemon, one for the broker and the load")

    os.sched_setaffinity(0, {LOAD_CORE})  # this process, its producer and the tansu it starts
    bootstrap, tansu = broker(args.brokers)
    work = tempfile.mkdtemp(prefix="longmem-own-core-")
    run = f"own-core-{os.getpid()}"
    topics = {t: f"{run}.{t}" for t in ("events", "recommendations", "alerts", "dead-letter")}
    daemon = None
    try:
        create_topics(bootstrap, list(topics.values()), args.partitions)
        rows = list(deal(movielens_events()))
        rows = (rows * (args.events // len(rows) + 1))[:args.events]
        produce_all(bootstrap, topics["events"],
                    [(u, click(u, i, ts)) for u, i, ts in rows])

        metrics_addr = f"127.0.0.1:{free_port()}"
        config = os.path.join(work, "longmem.toml")
        write_daemon_config(config, bootstrap=bootstrap, group=run, topics=topics, store=f"{work}/store",
                            model=args.model, metrics_addr=metrics_addr, mode=args.mode)
        with open(config, "a") as f:
            f.write(f'[kafka.consumer]\n"fetch.wait.max.ms" = "{args.fetch_wait_ms}"\n')
        daemon = subprocess.Popen(["taskset", "-c", str(DAEMON_CORE), args.binary, "run", "--config", config],
                                  env={**os.environ, "LONGMEM_LOG": "warn"}, stdout=subprocess.DEVNULL)

        first = None
        deadline = time.time() + 600
        while time.time() < deadline:
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited with {daemon.returncode}")
            consumed = metric(metrics_addr, CONSUMED) or 0
            now = time.time()
            if consumed and first is None:
                first = (now, consumed)
            if consumed >= args.events:
                break
            time.sleep(0.05)
        else:
            raise SystemExit("the daemon did not drain the preloaded events within 10 minutes")
        peak = (args.events - first[1]) / (now - first[0])
        print(f"peak (drain, daemon alone on core {DAEMON_CORE}): {peak:.0f} events/s")

        # Encoded beforehand: the load core also carries the broker.
        encoded = [(u.encode(), json.dumps(click(u, i, ts)).encode()) for u, i, ts in rows]
        results = {"peak_per_s": round(peak), "fetch_wait_ms": args.fetch_wait_ms, "phases": []}
        offset = len(rows)
        for fraction in [float(f) for f in args.fractions.split(",")]:
            rate = fraction * peak
            stop_event = threading.Event()

            def message(n, base=offset):
                return encoded[(base + n) % len(encoded)]

            producer = threading.Thread(target=produce_paced,
                                        args=(bootstrap, topics["events"], rate, stop_event, message, args.linger_ms))
            producer.start()
            time.sleep(1.0)  # warm-up: not measured
            (before, consumed_before), t0 = reading(metrics_addr), time.time()
            time.sleep(args.seconds)
            (after, consumed_after), t1 = reading(metrics_addr), time.time()
            stop_event.set()
            producer.join()
            offset += int(rate * (args.seconds + 2)) + 1
            counts = {b: after[b] - before.get(b, 0.0) for b in after}
            total = counts[float("inf")]
            phase = {
                "fraction": fraction,
                "offered_per_s": round(rate),
                "sustained_per_s": round((consumed_after - consumed_before) / (t1 - t0)),
                "answered": int(total),
                "within_20ms": round(counts[0.02] / total, 4),
                "within_50ms": round(counts[0.05] / total, 4),
                "within_100ms": round(counts[0.1] / total, 4),
                "p50_ms": round(1000 * quantile(counts, 0.5), 1),
                "p99_ms": round(1000 * quantile(counts, 0.99), 1),
            }
            results["phases"].append(phase)
            print(json.dumps(phase), flush=True)
            time.sleep(2.0)  # the backlog of one phase does not spill into the next
        print(json.dumps(results))
    finally:
        if daemon:
            stop(daemon)
        if tansu:
            tansu.terminate()
            tansu.wait()


if __name__ == "__main__":
    main()
