"""Latency across model rollouts under steady load.

    .tools/venv/bin/python benches/rollout_latency.py [--rate 2000] [--steady-s 15] [--after-s 10]

A paced producer sends MovieLens-100k clicks (in time order, wrapping around) to a tansu broker
started here ($LONGMEM_TANSU or .tools/bin/tansu) at --rate events/s; the release daemon
(`cargo build --release` first) answers with sasrec-ml100k. After --steady-s seconds the model is
rolled to gru4rec-ml100k through the admin API, and --after-s seconds later back to sasrec by SIGHUP;
each rollout checks the candidate and scores it in shadow first (config/default.toml's [rollout],
max_p99_ratio raised since SASRec costs about twice GRU4Rec per batch).

Latency of each recommendation: emitted_at_ms − ingest_timestamp_ms (from the event's Kafka
timestamp to the moment its batch was scored and its output built; the output's own produce is left
out, it does not depend on the model). Printed: p50/p99 over the steady window before the first
rollout, over each rollout's window (from the request to 5 s after its answer) and the ratio of
the windows' p99 to the steady p99. Needs confluent-kafka.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import Consumer, TopicPartition

from bench_support import (REPO, click, create_topics, free_port, movielens_events, produce_paced, start_daemon,
                           start_tansu, stop, write_daemon_config)

def post(addr, path, body):
    request = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=2000, help="events per second offered")
    p.add_argument("--steady-s", type=float, default=15)
    p.add_argument("--after-s", type=float, default=10)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--binary", default=os.path.join(REPO, "target/release/longmem"))
    args = p.parse_args()

    rows = movielens_events()
    bootstrap, broker = start_tansu()
    work = tempfile.mkdtemp(prefix="longmem-rollout-")
    run = f"rollout-{os.getpid()}"
    topics = {k: f"{run}.{k}" for k in ("events", "recommendations", "alerts", "dead-letter")}
    daemon = None
    stopping = threading.Event()
    try:
        create_topics(bootstrap, topics.values(), args.partitions)
        config = os.path.join(work, "longmem.toml")
        admin = f"127.0.0.1:{free_port()}"
        write_daemon_config(config, bootstrap=bootstrap, group=run, topics=topics, store=os.path.join(work, "store"),
                            model="models/sasrec-ml100k", metrics_addr=f"127.0.0.1:{free_port()}")
        with open(config, "a") as f:
            f.write(f'[admin]\nlisten = "{admin}"\n[rollout]\nmax_p99_ratio = 6.0\n')
        daemon = start_daemon(args.binary, config)

        def event(n):
            user, item, ts = rows[n % len(rows)]
            return user.encode(), json.dumps(click(user, item, ts)).encode()

        latencies = []  # (emitted_at s, latency ms, model)

        def read():
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{run}.reader",
                                 "enable.auto.commit": False})
            consumer.assign([TopicPartition(topics["recommendations"], i, 0) for i in range(args.partitions)])
            while not stopping.is_set():
                for m in consumer.consume(1000, 0.2):
                    if m.error():
                        continue
                    r = json.loads(m.value())
                    latencies.append((r["emitted_at_ms"] / 1000, r["emitted_at_ms"] - r["ingest_timestamp_ms"],
                                      r["model"]["name"]))
            consumer.close()

        time.sleep(8)  # the daemon joins its group
        threads = [threading.Thread(target=produce_paced, args=(bootstrap, topics["events"], args.rate, stopping, event)),
                   threading.Thread(target=read)]
        for t in threads:
            t.start()
        began = time.time()
        time.sleep(args.steady_s)
        windows = []
        asked = time.time()
        answer = post(admin, "/admin/model", {"path": os.path.join(REPO, "models/gru4rec-ml100k")})
        windows.append(("HTTP: sasrec → gru4rec", asked, time.time(), answer))
        time.sleep(args.after_s)
        asked = time.time()
        daemon.send_signal(signal.SIGHUP)
        # The SIGHUP's outcome is in the log and the metrics; the answer comes when gru4rec stops.
        while time.time() - asked < 120:
            recent = [m for at, _, m in latencies[-200:] if at > asked]
            if recent and recent[-1] == "sasrec-ml100k":
                break
            time.sleep(0.2)
        windows.append(("SIGHUP: gru4rec → sasrec", asked, time.time(), {"result": "promoted (seen in outputs)"}))
        time.sleep(args.after_s)
        stopping.set()
        for t in threads:
            t.join()
    finally:
        stopping.set()
        if daemon:
            stop(daemon)
        broker.kill()
        subprocess.run(["rm", "-rf", work])

    steady = [lat for at, lat, _ in latencies if began + 3 <= at < windows[0][1]]
    steady_p99 = percentile(steady, 0.99)
    print(f"offered {args.rate:.0f} events/s; {len(latencies)} recommendations read back")
    print("\n| window | events | p50 ms | p99 ms | p99 / steady p99 | outcome |")
    print("|---|---|---|---|---|---|")
    print(f"| steady, before any rollout | {len(steady)} | {percentile(steady, 0.5):.0f} | {steady_p99:.0f} | 1.00 | – |")
    for name, start, done, answer in windows:
        inside = [lat for at, lat, _ in latencies if start <= at < done + 5]
        shadow = answer.get("shadow") or {}
        outcome = answer.get("result", "?")
        if shadow:
            outcome += f", shadow {shadow.get('events')} events, overlap {shadow.get('top10_overlap', 0):.2f}"
        print(f"| {name} ({done - start:.1f} s to answer, +5 s) | {len(inside)} | {percentile(inside, 0.5):.0f} | "
              f"{percentile(inside, 0.99):.0f} | {percentile(inside, 0.99) / steady_p99:.2f} | {outcome} |")
    models = {}
    for _, _, m in latencies:
        models[m] = models.get(m, 0) + 1
    print(f"\nanswers by model: {models}")
    if not steady:
        sys.exit("no steady window: raise --steady-s")


if __name__ == "__main__":
    main()
