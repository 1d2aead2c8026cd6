"""The broker's own latency floor: a paced producer and a consumer, no daemon between them.

    .tools/venv/bin/python benches/broker_latency.py [--rate 3700] [--seconds 8] [--brokers HOST:PORT]

`longmem bench` measures end to end, from the event's production to the recommendation's
acknowledgement, and that includes one produce → fetch hop through the broker. This prints what
that hop alone costs on the same broker at the same rate: p50 and p99 of (read back − produced),
with the consumer fetching as the daemon does (`fetch.wait.max.ms` as given). It starts tansu on
127.0.0.1 ($LONGMEM_TANSU or .tools/bin/tansu) unless --brokers is given. Needs confluent-kafka.
"""
import argparse
import os
import struct
import threading
import time

from confluent_kafka import Consumer, TopicPartition

from bench_support import broker, create_topics, produce_paced


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=3700, help="messages per second offered")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--fetch-wait-ms", type=int, default=100, help="the consumer's fetch.wait.max.ms")
    p.add_argument("--brokers", help="an existing Kafka (host:port); default: start tansu")
    args = p.parse_args()

    bootstrap, tansu = broker(args.brokers)
    topic = f"broker-latency-{os.getpid()}"
    try:
        create_topics(bootstrap, [topic], args.partitions)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "enable.auto.commit": False,
                             "fetch.wait.max.ms": args.fetch_wait_ms,
                             "receive.message.max.bytes": 1_000_000_000})
        consumer.assign([TopicPartition(topic, i, 0) for i in range(args.partitions)])
        consumer.poll(1.0)
        stop = threading.Event()

        # Each message carries the time it was produced.
        producing = threading.Thread(target=produce_paced, args=(
            bootstrap, topic, args.rate, stop, lambda n: (str(n).encode(), struct.pack("d", time.time()))))
        producing.start()
        latencies = []
        end = time.time() + args.seconds
        while time.time() < end:
            for m in consumer.consume(1000, 0.1):
                if not m.error():
                    latencies.append((time.time() - struct.unpack("d", m.value())[0]) * 1000)
        stop.set()
        producing.join()
        consumer.close()
    finally:
        if tansu:
            tansu.kill()
    if not latencies:
        raise SystemExit("nothing came back from the broker")
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))]  # noqa: E731
    print(f"{len(latencies)} messages at {args.rate:.0f}/s offered, fetch.wait.max.ms {args.fetch_wait_ms}: "
          f"p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, max {latencies[-1]:.1f} ms")


if __name__ == "__main__":
    main()
