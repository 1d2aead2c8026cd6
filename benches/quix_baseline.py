"""longmem against the same job as a plain Python Quix Streams app (benches/quix_app.py), on the same
broker, model and events, one after the other.

    .tools/venv/bin/python benches/quix_baseline.py [--events 100000] [--partitions 4]

Events: MovieLens-100k's ratings in time order (../shared/data/seqrec/recbole_ml100k), as clicks
keyed by user, backlogged on a tansu broker started here ($LONGMEM_TANSU or .tools/bin/tansu). Each
contender (the Quix app; the release daemon, `cargo build --release` first, in step and in full
mode) drains them from the start with a group of its own into a recommendations topic of its own.
Drain rate: events over the span between reading back the first and the last recommendation. CPU:
the contender's process, user + system, when its last recommendation was read back (the broker's
and this script's CPU are not counted). Needs confluent-kafka, quixstreams, onnxruntime and numpy
(pip).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Consumer, TopicPartition

from bench_support import (MOVIELENS, REPO, click, cpu_seconds, create_topics, free_port, movielens_events, produce_all,
                           rss_mib, start_daemon, start_tansu, stop, write_daemon_config)

def wait_for_outputs(bootstrap, topic, partitions, expected, process, timeout):
    """Reads `topic` until `expected` records came; returns when the first and the last were read
    (epoch s), and the process's CPU seconds and peak RSS at that moment."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{topic}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen, first, last = 0, None, None
    deadline = time.time() + timeout
    try:
        while seen < expected:
            if time.time() > deadline:
                sys.exit(f"{topic}: {seen} of {expected} recommendations after {timeout} s")
            if process.poll() is not None:
                sys.exit(f"{topic}: the contender exited with {process.returncode} after {seen} recommendations")
            for m in consumer.consume(10000, 0.5):
                if m.error():
                    continue
                # When it was read, not its timestamp: Quix gives an output its input's timestamp.
                now = time.time()
                first = first or now
                last = now
                seen += 1
        return first, last, cpu_seconds(process.pid), rss_mib(process.pid)[1]
    finally:
        consumer.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000, help="the first N ratings in time order")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--model", default="models/sasrec-ml100k")
    p.add_argument("--binary", default=os.path.join(REPO, "target/release/longmem"))
    p.add_argument("--data", default=MOVIELENS)
    p.add_argument("--timeout", type=float, default=1800, help="seconds each contender may take")
    p.add_argument("--contenders", default="quix,longmem-step,longmem-full",
                   help="comma-separated, of quix, longmem-step, longmem-full")
    args = p.parse_args()

    rows = movielens_events(args.data, args.events)
    bootstrap, broker = start_tansu()
    work = tempfile.mkdtemp(prefix="longmem-quix-")
    run = f"quix-{os.getpid()}"
    events_topic = f"{run}.events"
    contenders = args.contenders.split(",")
    outputs = {c: f"{run}.{c}.recommendations" for c in contenders}
    results = []
    try:
        create_topics(bootstrap, [events_topic, *outputs.values()], args.partitions)
        produce_all(bootstrap, events_topic, ((user, click(user, item, ts)) for user, item, ts in rows))
        print(f"produced {len(rows)} events over {len({r[0] for r in rows})} users", flush=True)
        for name in contenders:
            started = time.time()
            if name == "quix":
                process = subprocess.Popen(
                    [sys.executable, os.path.join(REPO, "benches/quix_app.py"), bootstrap, f"{run}.quix",
                     events_topic, outputs[name], os.path.join(REPO, args.model), os.path.join(work, "quix-state")],
                    stdout=subprocess.DEVNULL)
            else:
                topics = {"events": events_topic, "recommendations": outputs[name],
                          "alerts": f"{run}.{name}.alerts", "dead-letter": f"{run}.{name}.dead-letter"}
                config = os.path.join(work, f"{name}.toml")
                write_daemon_config(config, bootstrap=bootstrap, group=f"{run}.{name}", topics=topics,
                                    store=os.path.join(work, f"{name}-store"), model=args.model,
                                    metrics_addr=f"127.0.0.1:{free_port()}", mode=name.split("-")[1])
                process = start_daemon(args.binary, config)
            try:
                first, last, cpu, peak = wait_for_outputs(bootstrap, outputs[name], args.partitions, len(rows),
                                                          process, args.timeout)
            finally:
                stop(process)
            row = {"contender": name, "events": len(rows), "events_per_s": round(len(rows) / max(last - first, 1e-3)),
                   "start_to_last_s": round(last - started, 1), "cpu_s_per_m_events": round(cpu / len(rows) * 1e6),
                   "peak_rss_mib": round(peak)}
            print(json.dumps(row), flush=True)
            results.append(row)
    finally:
        broker.kill()
        subprocess.run(["rm", "-rf", work])
    quix = next((r for r in results if r["contender"] == "quix"), None)
    print("\n| contender | events/s | × Quix | CPU s / M events | start to last output | peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in results:
        times = f"{r['events_per_s'] / quix['events_per_s']:.1f}" if quix else "–"
        print(f"| {r['contender']} | {r['events_per_s']:,} | {times} | "
              f"{r['cpu_s_per_m_events']:,} | {r['start_to_last_s']} s | {r['peak_rss_mib']} MiB |")


if __name__ == "__main__":
    main()
