"""A key flood: many distinct users, one click each, backlogged on a broker and drained by the daemon.

    .tools/venv/bin/python benches/key_flood.py --users 200000 [--cache-bytes N] [--state-cache-bytes N] [--restore]

What it answers is how the daemon's memory behaves when every event brings a user it has not seen,
the worst case for the store and the state cache: resident memory (sampled every 5 s from /proc),
the store on disk per user, and the drain rate. It starts tansu on 127.0.0.1 ($LONGMEM_TANSU or
.tools/bin/tansu) unless --brokers is given, runs the release binary (cargo build --release first),
and prints one Markdown row per sample and a summary. Needs confluent-kafka (pip).
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from bench_support import (REPO, broker, click, create_topics, du_bytes, free_port, metric, produce_all, rss_mib,
                           start_daemon, write_daemon_config)


def write_config(config, work, bootstrap, run, topics, args, metrics_addr):
    write_daemon_config(config, bootstrap=bootstrap, group=run, topics=topics, store=f"{work}/store",
                        model=args.model, metrics_addr=metrics_addr, cache_bytes=args.cache_bytes,
                        state_cache_bytes=args.state_cache_bytes)


def restore(daemon, args, bootstrap, run, topics):
    """The first daemon's machine is lost; a second one, with an empty store, takes over."""
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(30)
    work = tempfile.mkdtemp(prefix="longmem-flood-restore-")
    metrics_addr = f"127.0.0.1:{free_port()}"
    config = os.path.join(work, "longmem.toml")
    write_config(config, work, bootstrap, run, topics, args, metrics_addr)
    started = time.time()
    second = start_daemon(args.binary, config)
    try:
        assigned_at = None
        while time.time() - started < args.timeout:
            time.sleep(0.5)
            if second.poll() is not None:
                sys.exit(f"the second daemon exited with {second.returncode}")
            assigned = metric(metrics_addr, "longmem_assigned_partitions") or 0
            restoring = metric(metrics_addr, "longmem_changelog_restoring_partitions") or 0
            if assigned and assigned_at is None:
                assigned_at = time.time()
            if assigned and not restoring and (metric(metrics_addr, "longmem_changelog_records_restored_total") or 0) > 0:
                break
        records = metric(metrics_addr, "longmem_changelog_records_restored_total") or 0
        seconds = metric(metrics_addr, "longmem_changelog_restore_duration_seconds_sum") or 0
        rss, peak = rss_mib(second.pid)
        print(json.dumps({"restore": {"records": int(records), "seconds": round(seconds, 2),
                                      "records_per_s": round(records / seconds) if seconds else None,
                                      "start_to_assigned_s": round((assigned_at or started) - started, 1),
                                      "peak_rss_mib": round(peak),
                                      "store_bytes_per_user": round(du_bytes(work + "/store") / args.users)}}),
              flush=True)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(30)
        except subprocess.TimeoutExpired:
            second.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--events-per-user", type=int, default=1,
                   help="events per user, sent round by round (every user's first, then every user's second, ...)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--model", default="models/sasrec-ml100k")
    p.add_argument("--cache-bytes", type=int, default=256 << 20, help="store.cache_bytes (sled)")
    p.add_argument("--state-cache-bytes", type=int, default=128 << 20, help="store.state_cache_bytes")
    p.add_argument("--brokers", help="an existing Kafka (host:port); default: start tansu")
    p.add_argument("--binary", default=os.path.join(REPO, "target/release/longmem"))
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the drain")
    p.add_argument("--restore", action="store_true",
                   help="then lose the machine: a second daemon with an empty store takes the partitions over "
                        "and restores their memory from the changelog; prints how long that took")
    args = p.parse_args()

    bootstrap, tansu = broker(args.brokers)
    run = f"flood-{os.getpid()}"
    topics = {k: f"{run}.{k}" for k in ("events", "recommendations", "alerts", "dead-letter")}
    create_topics(bootstrap, topics.values(), args.partitions)

    items = open(os.path.join(REPO, args.model, "items.txt")).read().split()
    rng = random.Random(7)
    now = int(time.time() * 1000)
    t0 = time.time()
    produce_all(bootstrap, topics["events"],
                ((f"flood-{u}", click(f"flood-{u}", rng.choice(items), now))
                 for _round in range(args.events_per_user) for u in range(args.users)))
    events = args.users * args.events_per_user
    print(f"produced {events} events over {args.users} users in {time.time() - t0:.1f} s", flush=True)

    work = tempfile.mkdtemp(prefix="longmem-flood-")
    metrics_addr = f"127.0.0.1:{free_port()}"
    config = os.path.join(work, "longmem.toml")
    write_config(config, work, bootstrap, run, topics, args, metrics_addr)
    daemon = start_daemon(args.binary, config)
    print("| s | events answered | RSS MiB | peak RSS MiB | state cache MiB | store on disk MiB |")
    print("|---|---|---|---|---|---|", flush=True)
    started, first, done = time.time(), None, 0.0
    try:
        while time.time() - started < args.timeout:
            time.sleep(5)
            if daemon.poll() is not None:
                sys.exit(f"the daemon exited with {daemon.returncode}")
            done = metric(metrics_addr, "longmem_recommendations_produced_total") or 0.0
            if done and first is None:
                first = time.time()
            rss, peak = rss_mib(daemon.pid)
            cache = (metric(metrics_addr, "longmem_state_cache_bytes") or 0.0) / 2**20
            print(f"| {time.time() - started:.0f} | {done:.0f} | {rss:.0f} | {peak:.0f} | {cache:.0f} | "
                  f"{du_bytes(work + '/store') / 2**20:.0f} |", flush=True)
            if done >= events:
                break
        elapsed = time.time() - (first or started)
        rss, peak = rss_mib(daemon.pid)
        store = du_bytes(work + "/store")
        print(json.dumps({"users": args.users, "events": events, "answered": int(done),
                          "events_per_s": round(done / elapsed), "rss_mib": round(rss), "peak_rss_mib": round(peak),
                          "store_bytes_per_user": round(store / args.users),
                          "cache_bytes": args.cache_bytes, "state_cache_bytes": args.state_cache_bytes}))
        if args.restore:
            restore(daemon, args, bootstrap, run, topics)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        if tansu:
            tansu.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
