"""``make bench``: rxcqrs against a baseline doing the same work, side by side (figures, not assertions).

1. Avro decode of the shopping-cart command: AvroCodec (parsed fastavro) vs dataclasses-avroschema.
2. Source overhead on the in-memory fake: KafkaSource (demand, window, envelopes, commit gate) vs the same
   polls pushed through plain reactivex with one commit per poll.
3. Consuming from the real broker: KafkaSource (pull, gated commits) vs a bare KafkaConsumer poll loop.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any, Callable

from rxcqrs.testing import wait_until


def best_of(runs: int, fn: Callable[[], int]) -> float:
    """Items per second, best of ``runs``."""
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        items = fn()
        rates.append(items / (time.perf_counter() - started))
    return max(rates)


def report(name: str, ours: float, baseline: float, baseline_name: str) -> None:
    print(f"{name:<34} {ours:>11,.0f}/s   {baseline_name:<28} {baseline:>11,.0f}/s   ratio {ours / baseline:5.2f}x",
          flush=True)


def avro(n: int) -> None:
    from benchmarks.models import ShoppingCartCmd as model
    from rxcqrs.examples.shoppingcart.codec import command_codec
    from rxcqrs.examples.shoppingcart.domain import Command

    codec = command_codec()
    payloads = [codec.encode(Command("AddItem", uuid.uuid4(), uuid.uuid4(), i % 5 + 1)) for i in range(n)]
    ours = best_of(3, lambda: sum(1 for p in payloads if codec.decode(p)))
    baseline = best_of(3, lambda: sum(1 for p in payloads if model.deserialize(p)))
    report("avro decode (AvroCodec)", ours, baseline, "dataclasses-avroschema")


def fake_source(n: int) -> None:
    from rxcqrs import run
    from rxcqrs.kafka import ConsumerSettings, KafkaSource, SourceSettings
    from rxcqrs.testing import FakeBroker, FakeConsumer

    broker = FakeBroker()
    broker.create_topic("b", 4)
    for i in range(n):
        broker.append("b", b"x" * 100, partition=i % 4)

    def ours() -> int:
        group = uuid.uuid4().hex
        source = KafkaSource("b", ConsumerSettings(group_id=group), SourceSettings(poll_timeout=0.01),
                             consumer_factory=lambda cfg: FakeConsumer(broker, **cfg))
        flow = run(source)
        wait_until(lambda: source.metrics.get("acked") == n, 120, "all acked")
        flow.stop_and_wait()
        return n

    def baseline() -> int:
        """Rx without rxcqrs: each poll's records pushed through reactivex, one commit per poll, no gate."""
        import reactivex

        consumer = FakeConsumer(broker, group_id=uuid.uuid4().hex)
        consumer.subscribe(["b"])
        seen = [0]

        def count(_record: Any) -> None:
            seen[0] += 1

        while seen[0] < n:
            batch = consumer.poll(timeout_ms=10)
            for records in batch.values():
                reactivex.from_iterable(records).subscribe(count)
            if batch:
                consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
        return seen[0]

    report("KafkaSource on the fake", best_of(3, ours), best_of(3, baseline), "reactivex poll loop, no gate")


def real_source(n: int) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    from rxcqrs import run, services
    from rxcqrs.kafka import ConsumerSettings, KafkaSource, create_topics

    services.up()
    topic = f"bench.{uuid.uuid4().hex[:8]}"
    create_topics({topic: 4})
    producer = KafkaProducer(bootstrap_servers="127.0.0.1:9092", linger_ms=20, batch_size=256 * 1024)
    for i in range(n):
        producer.send(topic, b"x" * 100, partition=i % 4)
    producer.flush()
    producer.close()

    def ours() -> int:
        source = KafkaSource(topic, ConsumerSettings(group_id=uuid.uuid4().hex))
        flow = run(source)
        wait_until(lambda: source.metrics.get("acked") == n, 300, "all acked")
        flow.stop_and_wait()
        return n

    def baseline() -> int:
        consumer = KafkaConsumer(topic, bootstrap_servers="127.0.0.1:9092", group_id=uuid.uuid4().hex,
                                 auto_offset_reset="earliest", enable_auto_commit=False)
        seen = 0
        while seen < n:
            batch = consumer.poll(timeout_ms=200, max_records=500)
            seen += sum(len(r) for r in batch.values())
            if batch:
                consumer.commit()
        consumer.close()
        return seen

    report("KafkaSource on the real broker", best_of(2, ours), best_of(2, baseline), "bare KafkaConsumer loop")


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--skip-real", action="store_true", help="no servers: skip the real-broker figure")
    args = parser.parse_args(argv)
    print(f"rxcqrs benchmarks, {args.records} records each (best of several runs; ratio = ours / baseline)")
    avro(args.records)
    fake_source(args.records)
    if not args.skip_real:
        real_source(args.records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
