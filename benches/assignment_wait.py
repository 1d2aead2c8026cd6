"""What an assignment costs before its partitions consume: from the daemon's "partitions assigned" to
the last of them resumed ("partition restored; consuming"), read from its log.

    .tools/venv/bin/python benches/assignment_wait.py [--events 5000] [--rounds 3] [--brokers HOST:PORT]

Each round starts a daemon on fresh topics with an empty store (its changelog is empty: the wait of
a first start or of a scale-out onto new topics), feeds it `--events` clicks, stops it, then starts a
second daemon with an empty store of its own, which restores what the first wrote (the wait of a
partition that moved). Prints one JSON line per round. Starts tansu on 127.0.0.1 ($LONGMEM_TANSU or
.tools/bin/tansu) unless --brokers is given; the daemon is target/release/longmem.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from bench_support import REPO, broker, click, create_topics, free_port, produce_all, stop, write_daemon_config

ASSIGNED = "partitions assigned"
RESUMED = "partition restored; consuming"
RESTORED = re.compile(r"restored the partition's memory from the changelog.* read=(\d+)")


def wait_of(binary, config, partitions, timeout=60):
    """Starts the daemon and returns (seconds from assignment to every partition resumed, changelog
    records read, the process) once all `partitions` consume."""
    daemon = subprocess.Popen([binary, "run", "--config", config], env={**os.environ, "LONGMEM_LOG": "info",
                                                                        "NO_COLOR": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = {"assigned": None, "resumed": [], "read": 0}
    done = threading.Event()

    def follow():
        for line in daemon.stdout:
            now = time.monotonic()
            if ASSIGNED in line and seen["assigned"] is None:
                seen["assigned"] = now
            elif RESUMED in line:
                seen["resumed"].append(now)
                if len(seen["resumed"]) == partitions:
                    done.set()
            elif (m := RESTORED.search(line)):
                seen["read"] += int(m.group(1))
    threading.Thread(target=follow, daemon=True).start()
    if not done.wait(timeout) or seen["assigned"] is None:
        stop(daemon)
        raise SystemExit(f"the daemon did not resume all {partitions} partitions within {timeout} s")
    return max(seen["resumed"]) - seen["assigned"], seen["read"], daemon


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=5000, help="clicks the first daemon answers (500 users)")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", default="models/sasrec-ml100k")
    p.add_argument("--binary", default=os.path.join(REPO, "target/release/longmem"))
    p.add_argument("--brokers", help="an existing Kafka (host:port); default: start tansu")
    args = p.parse_args()
    bootstrap, tansu = broker(args.brokers)
    try:
        for round_ in range(args.rounds):
            run = f"wait{round_}-{int(time.time())}"
            topics = {k: f"{run}.{k}" for k in ("events", "recommendations", "alerts", "dead-letter")}
            create_topics(bootstrap, list(topics.values()), args.partitions)
            work = tempfile.mkdtemp(prefix="longmem-assignment-")
            try:
                figures = {}
                for name in ("empty changelog", "restore"):
                    config = os.path.join(work, f"{name[:5]}.toml")
                    write_daemon_config(config, bootstrap=bootstrap, group=run, topics=topics,
                                        store=os.path.join(work, f"store-{name[:5]}"), model=args.model,
                                        metrics_addr=f"127.0.0.1:{free_port()}")
                    seconds, read, daemon = wait_of(args.binary, config, args.partitions)
                    figures[name] = {"seconds": round(seconds, 3), "changelog_records_read": read}
                    if name == "empty changelog":
                        produce_all(bootstrap, topics["events"],
                                    ((f"u{i % 500}", click(f"u{i % 500}", str(1 + i % 1500), 1_700_000_000_000 + i))
                                     for i in range(args.events)))
                        time.sleep(5)  # answered, acknowledged and written
                    stop(daemon)
                print(json.dumps({"round": round_, **figures}), flush=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if tansu:
            stop(tansu)


if __name__ == "__main__":
    main()
