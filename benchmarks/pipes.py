"""Smaller benchmarks: the Cassandra ceiling on this machine, decode -> INSERT against a hand-written
``execute_async`` loop, Kafka -> Kafka against bare client loops (CPU per record), memory over a long run."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Callable

from benchmarks.cart import BOOTSTRAP, wait_committed

__all__ = ["cassandra_ceiling", "decode_insert", "kafka_to_kafka", "RssSampler"]


def cpu() -> float:
    """CPU seconds of this process, every thread included."""
    times = os.times()
    return times.user + times.system


class RssSampler:
    """Samples this process's resident memory (MiB) against records done."""

    def __init__(self, done: Callable[[], int]) -> None:
        self.done = done
        self.samples: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
            self.samples.append((self.done(), pages * os.sysconf("SC_PAGE_SIZE") / 2**20))

    def stop(self) -> float:
        """The slope in MiB per 100,000 records (least squares over the second half of the run)."""
        self._stop.set()
        self._thread.join()
        half = self.samples[len(self.samples) // 2:]
        if len(half) < 2:
            return 0.0
        xs, ys = [x for x, _ in half], [y for _, y in half]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 100_000


def cassandra_ceiling(session: Any, seconds: float = 4.0) -> dict[str, float]:
    """LWT and INSERT rates at several concurrencies (execute_async, bounded): what the node can do here."""
    from rxcqrs.cassandra import create_keyspace, create_table, prepare

    ks = f"bench_ceiling_{uuid.uuid4().hex[:6]}"
    create_keyspace(session, ks)
    create_table(session, ks, "kv", {"k": "int", "v": "int"}, ["k"])
    insert = prepare(session, f"INSERT INTO {ks}.kv (k, v) VALUES (?, ?)")
    lwt = prepare(session, f"UPDATE {ks}.kv SET v = ? WHERE k = ? IF v = ?")
    out = {}
    for concurrency in (1, 8, 32):
        out[f"insert@{concurrency}"] = _rate(session, lambda i: insert.bind((i, 0)), concurrency, seconds)
        out[f"lwt@{concurrency}"] = _rate(session, lambda i: lwt.bind((1, i % 100_000, 0)), concurrency, seconds)
    session.execute(f"DROP KEYSPACE {ks}", timeout=60)
    return out


def _rate(session: Any, statement: Callable[[int], Any], concurrency: int, seconds: float) -> float:
    lock = threading.Lock()
    state = {"done": 0, "next": 0, "stop": False}
    finished = threading.Event()
    running = [0]

    def launch() -> None:
        with lock:
            if state["stop"]:
                running[0] -= 1
                if running[0] == 0:
                    finished.set()
                return
            i = state["next"]
            state["next"] += 1
        session.execute_async(statement(i)).add_callbacks(done, failed)

    def done(_rows: Any) -> None:
        with lock:
            state["done"] += 1
        launch()

    def failed(_error: Any) -> None:
        launch()

    started = time.perf_counter()
    running[0] = concurrency
    for _ in range(concurrency):
        launch()
    finished.wait(seconds)  # the measuring period
    with lock:
        state["stop"] = True
    finished.wait(30)
    return state["done"] / (time.perf_counter() - started)


def decode_insert(session: Any, topic: str, total: int, order: tuple[str, ...] = ("rxcqrs", "hand")
                  ) -> dict[str, float]:
    """KafkaSource -> decode -> bind -> CassandraSink against poll -> decode -> execute_async (32 in flight),
    both on confluent-kafka, in ``order`` (the caller alternates it between rounds: whoever runs second meets
    a Cassandra that has finished more of the previous section's compactions)."""
    from confluent_kafka import Consumer

    from rxcqrs import run
    from rxcqrs.cassandra import CassandraSink, create_keyspace, create_table, prepare
    from rxcqrs.examples.shoppingcart.codec import command_codec
    from rxcqrs.kafka import ConsumerSettings, KafkaSink, KafkaSource, ProducerSettings, SourceSettings
    from rxcqrs.operators import DeadLetters, decode, map_value

    codec = command_codec()
    results = {}
    for name in order:
        ks = f"bench_insert_{uuid.uuid4().hex[:6]}"
        create_keyspace(session, ks)
        create_table(session, ks, "events", {"id": "uuid", "cart": "uuid", "action": "text"}, ["id"])
        insert = prepare(session, f"INSERT INTO {ks}.events (id, cart, action) VALUES (?, ?, ?)")
        started, cpu0 = time.perf_counter(), cpu()
        if name.startswith("rxcqrs"):
            dead = KafkaSink(producer=ProducerSettings())
            source = KafkaSource(topic, ConsumerSettings(group_id=f"g.{ks}", max_poll_records=2000),
                                 SourceSettings(max_in_flight=2000))
            flow = run(source, decode(codec, dead_letters=DeadLetters(dead)),
                       map_value(lambda c, ps=insert: ps.bind((uuid.uuid4(), c.cart_id, c.action))),
                       CassandraSink(session, max_concurrency=32))
            wait_committed(source, total, 600)
            took = time.perf_counter() - started
            flow.stop_and_wait()
            dead.on_completed()
        else:  # the same client as rxcqrs' default (confluent-kafka)
            consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"g.{ks}", "enable.auto.commit": False,
                                 "auto.offset.reset": "earliest"})
            consumer.subscribe([topic])
            slots = threading.Semaphore(32)
            done = 0
            while done < total:
                messages = [m for m in consumer.consume(2000, 0.2) if m.error() is None]
                futures = []
                for m in messages:
                    c = codec.decode(m.value())
                    slots.acquire()
                    future = session.execute_async(insert.bind((uuid.uuid4(), c.cart_id, c.action)))
                    future.add_callbacks(lambda _r, s=slots: s.release(), lambda _e, s=slots: s.release())
                    futures.append(future)
                for future in futures:
                    future.result()
                done += len(futures)
                if messages:
                    consumer.commit(asynchronous=False)
            took = time.perf_counter() - started
            consumer.close()
        results[name] = total / took
        results[f"{name}_cpu_us"] = (cpu() - cpu0) / total * 1e6
        count = session.execute(f"SELECT count(*) FROM {ks}.events", timeout=120).one()[0]
        results[f"{name}_verified"] = count == total
        session.execute(f"DROP KEYSPACE {ks}", timeout=60)
    return results


def kafka_to_kafka(topic: str, total: int, backend: str, order: tuple[str, ...] = ("rxcqrs", "rxcqrs_batches", "bare")
                   ) -> dict[str, float]:
    """KafkaSource -> map -> KafkaSink (record by record, and with ``batches``) against the bare client loop of
    the same backend, in ``order``: records/s and CPU microseconds per record (this process, every thread)."""
    from rxcqrs import run
    from rxcqrs.kafka import (
        ConsumerSettings,
        KafkaSink,
        KafkaSource,
        ProducerSettings,
        SourceSettings,
        create_topics,
        end_offsets,
    )
    from rxcqrs.messages import OutgoingRecord
    from rxcqrs.operators import map_value

    out: dict[str, float] = {}
    for name in order:
        target = f"bench.out.{uuid.uuid4().hex[:6]}"
        create_topics({target: 8})
        started, cpu0 = time.perf_counter(), cpu()
        if name == "rxcqrs_traced":
            from rxcqrs import tracing

            tracing.enable(_discarding_exporter())
        if name.startswith("rxcqrs"):
            sink = KafkaSink(target, ProducerSettings(backend=backend))  # type: ignore[arg-type]
            source = KafkaSource(topic, ConsumerSettings(group_id=f"g.{target}", backend=backend,  # type: ignore[arg-type]
                                                         max_poll_records=2000),
                                 SourceSettings(max_in_flight=5000, prefetch=True, batches=name == "rxcqrs_batches"))
            flow = run(source, map_value(lambda v: OutgoingRecord(v)), sink)
            wait_committed(source, total, 600)
            flow.stop_and_wait()
            if name == "rxcqrs_traced":
                tracing.disable()  # every span exported (to nowhere): its cost is in the figure
        elif backend == "confluent":
            _bare_confluent(topic, target, total, acked=name == "bare_acked")
        else:
            _bare_kafka_python(topic, target, total)
        took = time.perf_counter() - started
        out[name] = total / took
        out[f"{name}_cpu_us"] = (cpu() - cpu0) / total * 1e6
        out[f"{name}_verified"] = sum(end_offsets(target).values()) >= total
    return out


def _discarding_exporter() -> Any:
    """An OpenTelemetry exporter that drops what it gets: the cost of tracing without a collector's."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return Discard()


def _bare_kafka_python(topic: str, target: str, total: int) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, group_id=f"g.{target}", enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=2000)
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5, batch_size=64 * 1024)
    done = 0
    while done < total:
        for records in consumer.poll(timeout_ms=200).values():
            for r in records:
                producer.send(target, value=r.value)
                done += 1
        producer.flush()
        consumer.commit()
    producer.close()
    consumer.close()


def quixstreams_pipe(topic: str, total: int) -> dict[str, float]:
    """The same Kafka -> Kafka copy with Quix Streams (confluent-kafka underneath), if installed."""
    from quixstreams import Application

    from rxcqrs.kafka import create_topics, end_offsets

    target = f"bench.out.{uuid.uuid4().hex[:6]}"
    create_topics({target: 8})
    app = Application(broker_address=BOOTSTRAP, consumer_group=f"g.{target}", auto_offset_reset="earliest",
                      auto_create_topics=False)
    source = app.topic(topic, value_deserializer="bytes", key_deserializer="bytes")
    sink = app.topic(target, value_serializer="bytes", key_serializer="bytes")
    frame = app.dataframe(source)
    frame.to_topic(sink)
    started, cpu0 = time.perf_counter(), cpu()
    app.run(count=total, timeout=300, collect=False)
    took = time.perf_counter() - started
    return {"quixstreams": total / took, "quixstreams_cpu_us": (cpu() - cpu0) / total * 1e6,
            "quixstreams_verified": sum(end_offsets(target).values()) >= total}


def _bare_confluent(topic: str, target: str, total: int, acked: bool = False) -> None:
    """The bare loop; ``acked``: with rxcqrs's producer settings (idempotent, ``acks=all``) and a delivery
    report per record, the least an at-least-once flow that acks each record asynchronously pays."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"g.{target}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    settings = {"enable.idempotence": True, "acks": "all", "batch.size": 64 * 1024} if acked else {}
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5, **settings})
    delivered = [0]

    def report(error: Any, _message: Any) -> None:
        delivered[0] += error is None

    done = 0
    while done < total:
        messages = consumer.consume(2000, 0.2)
        for m in messages:
            if m.error() is None:
                if acked:
                    producer.produce(target, m.value(), on_delivery=report)
                else:
                    producer.produce(target, m.value())
                done += 1
        producer.flush()
        if messages:
            consumer.commit(asynchronous=False)
    consumer.close()
