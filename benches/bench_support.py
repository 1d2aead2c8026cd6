"""What the Python benchmarks share: a tansu broker on 127.0.0.1, topics, the release daemon with a
config of its own, and readings of a process (/proc) and of the daemon's /metrics page."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MOVIELENS = os.path.join(REPO, "..", "shared", "data", "seqrec", "recbole_ml100k", "ml-100k.inter")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tansu():
    """(bootstrap address, process) of a tansu broker with memory storage ($LONGMEM_TANSU or
    .tools/bin/tansu: `bash scripts/fetch-tools.sh`)."""
    bootstrap = f"127.0.0.1:{free_port()}"
    tansu = os.environ.get("LONGMEM_TANSU", os.path.join(REPO, ".tools/bin/tansu"))
    broker = subprocess.Popen([tansu, "broker", "--listener-url", f"tcp://{bootstrap}",
                               "--advertised-listener-url", f"tcp://{bootstrap}",
                               "--storage-engine", "memory://tansu/"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return bootstrap, broker


def broker(brokers=None):
    """(bootstrap address, the tansu process or None): `brokers` when given, else a tansu started here."""
    if brokers:
        return brokers, None
    return start_tansu()


def movielens_events(path=MOVIELENS, limit=None):
    """(user, item, timestamp in ms) of MovieLens-100k's ratings, ordered by time (ties in file order)."""
    rows = []
    with open(path) as f:
        next(f)  # header
        for line in f:
            user, item, _rating, ts = line.rstrip("\n").split("\t")
            rows.append((user, item, int(float(ts)) * 1000))
    rows.sort(key=lambda r: r[2])  # stable
    return rows[:limit]


def click(user, item, timestamp_ms):
    return {"event_type": "click", "user_id": user, "item_id": item, "timestamp_ms": timestamp_ms}


def produce_all(bootstrap, topic, keyed_events):
    """Produces (key, event) pairs as JSON and waits until every one is delivered."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "none",
                         "queue.buffering.max.messages": 1_000_000})
    for key, event in keyed_events:
        while True:
            try:
                producer.produce(topic, json.dumps(event).encode(), key.encode())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(300) != 0:
        sys.exit("the producer could not deliver every event")


def produce_paced(bootstrap, topic, rate, stop, message, linger_ms=2):
    """Produces `message(n)` -> (key bytes, value bytes) for n = 0, 1, ... at `rate` per second until
    the `stop` event is set, then waits for delivery. Run it on a thread of its own."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms})
    sent, started = 0, time.time()
    while not stop.is_set():
        due = int((time.time() - started) * rate)
        while sent < due:
            key, value = message(sent)
            producer.produce(topic, value, key)
            sent += 1
        producer.poll(0)
        time.sleep(0.002)
    producer.flush(10)


def create_topics(bootstrap, names, partitions):
    """Creates `names` with `partitions` each. retention.ms is set explicitly: tansu reports only the
    configs a topic was created with, and clients that check a topic's settings (Quix) need it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, partitions, 1, config={"retention.ms": "-1"}) for t in names])
    for f in futures.values():
        f.result(30)


def metrics_page(addr):
    """The daemon's /metrics page, or None while it does not answer."""
    try:
        return urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()
    except OSError:
        return None


def series_sum(page, name):
    """Sum of a metric's series on a /metrics page."""
    total = 0.0
    for line in page.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric(addr, name):
    """Sum of a metric's series on the daemon's /metrics page, or None while it does not answer."""
    page = metrics_page(addr)
    return None if page is None else series_sum(page, name)


def rss_mib(pid):
    """(current, peak) resident set of `pid` in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid):
    """User + system CPU seconds `pid` has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def du_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def write_daemon_config(path, *, bootstrap, group, topics, store, model, metrics_addr, mode="auto",
                        cache_bytes=256 << 20, state_cache_bytes=128 << 20):
    """A daemon config for one run: its own group, topics (keys events, recommendations, alerts,
    dead-letter), store and metrics listener."""
    with open(path, "w") as f:
        f.write(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
[topics]
input = ["{topics['events']}"]
recommendations = "{topics['recommendations']}"
alerts = "{topics['alerts']}"
dead_letter = "{topics['dead-letter']}"
[store]
path = "{store}"
cache_bytes = {cache_bytes}
state_cache_bytes = {state_cache_bytes}
[model]
path = "{os.path.join(REPO, model)}"
mode = "{mode}"
[metrics]
listen = "{metrics_addr}"
""")


def start_daemon(binary, config):
    return subprocess.Popen([binary, "run", "--config", config], env={**os.environ, "LONGMEM_LOG": "warn"},
                            stdout=subprocess.DEVNULL)


def stop(process, grace=30):
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
