"""``make bench``: rxcqrs against baselines doing the same work, side by side in one run, on the same data,
each final state verified (figures, not assertions). Prints one table and writes ``build/bench.json``.

Sections (``--only`` picks some): cart (rxcqrs batched, fenced and conditional, against hand-written
cart-batched loops with a conditional and with a fenced write, on 200 and on 20,000 carts; then parallel,
serial, not idempotent, a hand-written per-command loop and a naive loop), carts (rate as commands per
cart fall), sustained (200,000 commands over 2,000 carts: the batched contenders, and memory), scale
(1..N consumer processes in one group; ``make bench-cluster`` runs it with 1, 2, 3 on a 3-node cluster,
replication 3), ceiling (Cassandra alone), insert (decode -> INSERT), kafka (Kafka -> Kafka per backend),
tracing (that copy with OpenTelemetry tracing off and on),
projection (events/s into each read model of the carts, beside a hand-written loop doing the same writes).
``--against REV`` adds rxcqrs batched as an earlier revision runs it (``benchmarks/revision.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

SECTIONS = ("cart", "carts", "sustained", "scale", "ceiling", "insert", "kafka", "projection", "tracing")
ROWS: list[dict[str, Any]] = []


def row(section: str, contender: str, rate: float, **extra: Any) -> None:
    ROWS.append({"section": section, "contender": contender, "per_s": round(rate, 1), **extra})
    shown = "  ".join(f"{k} {v}" for k, v in extra.items())
    print(f"{section:<10} {contender:<34} {rate:>10,.0f}/s  {shown}", flush=True)


def drop(session: Any, keyspace: str) -> None:
    """Drop a contender's keyspace once verified, so that the next run does not pay for its compactions."""
    session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)


def produce(carts: int, commands: int, partitions: int = 8) -> str:
    from rxcqrs.examples.shoppingcart.generator import generate
    from rxcqrs.examples.shoppingcart.pipeline import publish_commands
    from rxcqrs.kafka import create_topics

    topic = f"bench.{carts}.{commands}.{uuid.uuid4().hex[:6]}"
    create_topics({topic: partitions, topic + ".dlq": 1})
    publish_commands(generate(carts, commands, seed=7), topic, partitions)
    return topic


BATCHED = ("rxcqrs batched, fenced (default)", "rxcqrs batched, conditional", "hand cart-batched, conditional",
           "hand cart-batched, fenced")


def batched_contenders(session: Any, topic: str, commands: int, against: str | None = None) -> dict[str, Any]:
    """The batched contenders; ``against``: and rxcqrs batched as that git revision runs it."""
    from benchmarks import cart as c

    contenders = {
        BATCHED[0]: lambda ks: c.rxcqrs_mode(session, topic, ks, commands, "batched"),
        BATCHED[1]: lambda ks: c.rxcqrs_mode(session, topic, ks, commands, "batched", protocol="conditional"),
        BATCHED[2]: lambda ks: c.hand_cart_batched(session, topic, ks, commands),
        BATCHED[3]: lambda ks: c.hand_cart_batched(session, topic, ks, commands, protocol="fenced"),
    }
    if against:
        from benchmarks import revision

        contenders[f"rxcqrs batched at {against}"] = revision.contender(revision.checkout(against), topic, commands)
    return contenders


def compare(session: Any, section: str, label: str, contenders: dict[str, Any], rounds: int) -> None:
    """Every contender once per round, the order rotating; medians of rate and CPU per command; ratios to the
    conditional and the fenced hand loops as medians of the rounds' own ratios (each round's contenders run
    back to back, so a slow stretch of the machine moves both sides of a round's ratio alike)."""
    from benchmarks import cart as c

    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    checks: dict[str, bool] = {name: True for name in contenders}
    names = tuple(contenders)
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            ks = c.keyspace(section)
            gc.collect()
            gc.freeze()  # what earlier contenders left alive is not the next one's to traverse
            try:
                rate, info = contenders[name](ks)
            finally:
                gc.unfreeze()
            rates[name].append(rate)
            cpus[name].append(info["cpu_us"])
            checks[name] = checks[name] and bool(info.get("verified"))
            drop(session, ks)
    for name, values in rates.items():
        ratios: dict[str, Any] = {}
        if BATCHED[2] in rates:
            ratios["vs_conditional_loop"] = paired_ratio(values, rates[BATCHED[2]])
        if BATCHED[3] in rates:
            ratios["vs_fenced_loop"] = paired_ratio(values, rates[BATCHED[3]])
            ratios["cpu_vs_fenced_loop"] = paired_ratio(cpus[name], cpus[BATCHED[3]])
            ratios["cpu_ratio_spread"] = ratio_spread(cpus[name], cpus[BATCHED[3]])
        row(section, f"{name} [{label}]", statistics.median(values), cpu_us=statistics.median(cpus[name]),
            **ratios, rounds=len(values), spread=f"{min(values):,.0f}-{max(values):,.0f}", verified=checks[name])


def round_ratios(values: list[float], baseline: list[float]) -> list[float]:
    """``values[i] / baseline[i]`` for every round (the rounds must pair)."""
    return [v / b for v, b in zip(values, baseline, strict=True)]


def paired_ratio(values: list[float], baseline: list[float]) -> float:
    """The median over rounds of ``values[i] / baseline[i]``."""
    return round(statistics.median(round_ratios(values, baseline)), 2)


def ratio_spread(values: list[float], baseline: list[float]) -> str:
    ratios = round_ratios(values, baseline)
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def cart(session: Any, rounds: int, slow_rounds: int, commands: int, against: str | None = None) -> None:
    """The batched contenders on 200 and on 20,000 carts (``rounds`` interleaved rounds each), then the
    per-command ones (minutes each) on 200 carts, ``slow_rounds``."""
    from benchmarks import cart as c

    for carts_count in (200, 20_000):
        topic = produce(carts_count, commands)
        compare(session, "cart", f"{commands:,} commands, {carts_count:,} carts",
                batched_contenders(session, topic, commands, against), rounds)
    if slow_rounds < 1:
        return
    topic = produce(200, commands)
    slow = {
        "rxcqrs parallel": lambda ks: c.rxcqrs_mode(session, topic, ks, commands, "parallel"),
        "rxcqrs serial": lambda ks: c.rxcqrs_mode(session, topic, ks, commands, "serial"),
        "rxcqrs parallel, not idempotent": lambda ks: c.rxcqrs_mode(session, topic, ks, commands, "parallel",
                                                                    idempotent=False),
        "hand per-command loop": lambda ks: c.hand_per_command(session, topic, ks, commands),
        "naive loop (20 s on a prefix)": lambda ks: c.naive(session, topic, ks, 20.0),
    }
    compare(session, "cart", f"{commands:,} commands, 200 carts", slow, slow_rounds)


def carts(session: Any, commands: int) -> None:
    from benchmarks import cart as c

    for count in (200, 2_000, 20_000):
        topic = produce(count, commands)
        ks = c.keyspace("carts")
        rate, info = c.rxcqrs_mode(session, topic, ks, commands, "batched")
        drop(session, ks)
        row("carts", f"batched, {count} carts ({commands // count} cmds/cart)", rate, verified=info["verified"])


def sustained(session: Any, commands: int, rounds: int, against: str | None = None) -> None:
    """``commands`` over 2,000 carts: the batched contenders side by side; then rxcqrs's memory over a run."""
    from benchmarks import cart as c
    from benchmarks.pipes import RssSampler
    from rxcqrs.examples.shoppingcart.pipeline import start_pipeline
    from rxcqrs.examples.shoppingcart.store import CartStore
    from rxcqrs.kafka import KafkaSink, ProducerSettings
    from rxcqrs.operators import DeadLetters

    topic = produce(2_000, commands)
    compare(session, "sustained", f"{commands:,} commands, 2,000 carts",
            batched_contenders(session, topic, commands, against), rounds)
    ks = c.keyspace("sustained")
    store = CartStore(session, ks)
    store.create()
    dead = KafkaSink(producer=ProducerSettings())
    source = c.example_source(topic, f"g.{ks}")
    sampler = RssSampler(source.committer.records_committed)
    started = time.perf_counter()
    flow = start_pipeline(source, store, dead_letters=DeadLetters(dead))
    c.wait_committed(source, commands, 3600)
    took = time.perf_counter() - started
    slope = sampler.stop()
    flow.stop_and_wait()
    dead.on_completed()
    row("sustained", f"batched memory, {commands:,} commands", commands / took, rss_mib_per_100k=round(slope, 2),
        rss_mib=round(sampler.samples[-1][1], 1) if sampler.samples else None, verified=c.verify(session, ks, topic))
    drop(session, ks)


def scale(session: Any, commands: int, processes: tuple[int, ...], replication: int) -> None:
    """1..N consumer processes in one group (a keyspace each time), the whole topic each time; CPU is the
    consumer processes' own (user + system), per record. The servers share the same cores."""
    import resource

    from benchmarks import cart as c
    from rxcqrs.kafka import committed_offsets, end_offsets

    topic = produce(200, commands, partitions=12)
    ends = end_offsets(topic)
    for count in processes:
        ks, group = c.keyspace("procs"), f"g.procs.{uuid.uuid4().hex[:6]}"
        args = [sys.executable, "-m", "rxcqrs.examples.shoppingcart", "consume", "--topic", topic, "--group", group,
                "--keyspace", ks, "--create-schema", "--replication", str(replication), "--progress-every", "60",
                "--stop-when-idle", "3"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
        c._wait(lambda g=group: committed_offsets(g, topic) == ends, 1800)
        took = time.perf_counter() - started
        for p in procs:
            p.wait(120)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        row("scale", f"{count} consumer process(es), batched", commands / took,
            cpu_us=round(cpu / commands * 1e6, 1), replication=replication, verified=c.verify(session, ks, topic))
        drop(session, ks)


def ceiling(session: Any) -> None:
    from benchmarks.pipes import cassandra_ceiling

    for name, rate in cassandra_ceiling(session).items():
        row("ceiling", f"Cassandra alone: {name} in flight", rate)


def rotating(rounds: int, names: tuple[str, ...], run: Any) -> list[dict[str, Any]]:
    """``run(order)`` ``rounds`` times, the order rotating (a pair alternates): whoever runs later meets
    servers that have finished more of the previous run's background work (compactions, log flushes)."""
    return [run(names[i % len(names):] + names[:i % len(names)]) for i in range(rounds)]


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def spread_of(runs: list[dict[str, Any]], key: str) -> str:
    values = [run[key] for run in runs]
    return f"{min(values):,.0f}-{max(values):,.0f}"


def insert(session: Any, commands: int, rounds: int) -> None:
    from benchmarks.pipes import decode_insert

    topic = produce(200, commands)
    runs = rotating(rounds, ("rxcqrs", "hand"), lambda order: decode_insert(session, topic, commands, order))
    row("insert", "rxcqrs decode -> INSERT", median_of(runs, "rxcqrs"),
        cpu_us=round(median_of(runs, "rxcqrs_cpu_us"), 1),
        vs_hand=round(median_of(runs, "rxcqrs") / median_of(runs, "hand"), 2), rounds=rounds,
        spread=spread_of(runs, "rxcqrs"), verified=all(run["rxcqrs_verified"] for run in runs))
    row("insert", "hand poll -> decode -> execute_async", median_of(runs, "hand"),
        cpu_us=round(median_of(runs, "hand_cpu_us"), 1), rounds=rounds, spread=spread_of(runs, "hand"),
        verified=all(run["hand_verified"] for run in runs))


def kafka(commands: int, rounds: int) -> None:
    from benchmarks.pipes import kafka_to_kafka

    topic = produce(200, commands)
    for backend in ("kafka-python", "confluent"):
        names = ("rxcqrs", "rxcqrs_batches", "bare") + (("bare_acked",) if backend == "confluent" else ())
        runs = rotating(rounds, names, lambda order, b=backend: kafka_to_kafka(topic, commands, b, order))
        for name, label in (("rxcqrs", "records"), ("rxcqrs_batches", "batches")):
            above = [run[f"{name}_cpu_us"] - run["bare_cpu_us"] for run in runs]
            row("kafka", f"KafkaSource -> KafkaSink, {label} ({backend})", median_of(runs, name),
                cpu_us=round(median_of(runs, f"{name}_cpu_us"), 1), above_bare_us=round(statistics.median(above), 1),
                above_spread=f"{min(above):.1f}-{max(above):.1f}", rounds=rounds,
                verified=all(run[f"{name}_verified"] for run in runs))
        row("kafka", f"bare {backend} loop", median_of(runs, "bare"), cpu_us=round(median_of(runs, "bare_cpu_us"), 1),
            rounds=rounds, verified=all(run["bare_verified"] for run in runs))
        if backend == "confluent":
            row("kafka", "bare confluent loop, idempotent + a delivery report per record",
                median_of(runs, "bare_acked"), cpu_us=round(median_of(runs, "bare_acked_cpu_us"), 1), rounds=rounds,
                verified=all(run["bare_acked_verified"] for run in runs))
    try:
        from benchmarks.pipes import quixstreams_pipe
    except ImportError:
        print("kafka      quixstreams not installed (pip install -e '.[bench]')", flush=True)
        return
    runs = [quixstreams_pipe(topic, commands) for _ in range(rounds)]
    row("kafka", "Quix Streams copy", median_of(runs, "quixstreams"),
        cpu_us=round(median_of(runs, "quixstreams_cpu_us"), 1), rounds=rounds,
        verified=all(run["quixstreams_verified"] for run in runs))


def tracing_cost(commands: int, rounds: int) -> None:
    """CPU per record of the Kafka -> Kafka copy (confluent-kafka) with tracing off and on (every span made and
    exported, to an exporter that drops them)."""
    from benchmarks.pipes import kafka_to_kafka

    topic = produce(200, commands)
    runs = rotating(rounds, ("rxcqrs", "rxcqrs_traced"), lambda order: kafka_to_kafka(topic, commands, "confluent",
                                                                                        order))
    for name, label in (("rxcqrs", "off"), ("rxcqrs_traced", "on")):
        row("tracing", f"KafkaSource -> KafkaSink (confluent), tracing {label}", median_of(runs, name),
            cpu_us=round(median_of(runs, f"{name}_cpu_us"), 1), spread=spread_of(runs, name), rounds=rounds,
            verified=all(run[f"{name}_verified"] for run in runs))


def _prepared_session(gc_threshold: int | None) -> Any:
    """This process set up as every contender runs in it (the GC threshold, quiet clients); a session."""
    from rxcqrs.examples.shoppingcart.tuning import GC_THRESHOLD
    from rxcqrs.gc_tuning import set_young_threshold, young_threshold

    set_young_threshold(GC_THRESHOLD if gc_threshold is None else gc_threshold)
    print(f"every contender in this process runs with the young-generation GC threshold {young_threshold()}",
          flush=True)
    import logging

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("kafka", "cassandra"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from rxcqrs.cassandra import connect

    return connect()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the cart section's batched contenders, insert and kafka (median)")
    parser.add_argument("--slow-rounds", type=int, default=1,
                        help="interleaved rounds of the cart section's per-command contenders (median)")
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--sustained", type=int, default=200_000, help="commands of the sustained run")
    parser.add_argument("--sustained-rounds", type=int, default=1, help="rounds of the sustained contenders")
    parser.add_argument("--kafka-records", type=int, default=100_000,
                        help="records of each kafka run (enough that start-up is a small part of CPU per record)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="consumer processes of scale")
    parser.add_argument("--replication", type=int, default=1, help="replication of the keyspaces scale creates")
    parser.add_argument("--against", metavar="REV",
                        help="also run rxcqrs batched as git revision REV of this repository runs it (its engine, "
                             "defaults and verification), beside the batched contenders of cart and sustained")
    parser.add_argument("--gc-threshold", type=int, default=None, metavar="OBJECTS",
                        help="the young-generation GC threshold of this process, so of every contender run in it, "
                             "the hand-written loops included (default: cart consume's, "
                             "rxcqrs/examples/shoppingcart/tuning.py; 0: Python's own)")
    parser.add_argument("--isolate-cpus", metavar="SERVERS:CONTENDERS",
                        help="pin the servers of `rxcqrs services` to some cores and every contender to the others, "
                             "e.g. 0:1 (benchmarks/isolation.py); default: everything shares every core")
    parser.add_argument("--json", default="build/bench.json")
    args = parser.parse_args()
    restore = None
    if args.isolate_cpus:
        from benchmarks.isolation import isolate, parse_cpus
        from rxcqrs.exceptions import RxCqrsError

        try:
            restore = isolate(*parse_cpus(args.isolate_cpus))
        except RxCqrsError as exc:
            print(f"benchmarks: {exc}", file=sys.stderr)
            return 2
    session = None
    try:  # from here on, the servers get their cores back however the run ends (a failed connect included)
        session = _prepared_session(args.gc_threshold)
        for section in args.only:
            if section == "cart":
                cart(session, args.rounds, args.slow_rounds, args.commands, args.against)
            elif section == "carts":
                carts(session, args.commands)
            elif section == "sustained":
                sustained(session, args.sustained, args.sustained_rounds, args.against)
            elif section == "scale":
                scale(session, args.commands, tuple(args.processes), args.replication)
            elif section == "ceiling":
                ceiling(session)
            elif section == "insert":
                insert(session, args.commands, args.rounds)
            elif section == "projection":
                from benchmarks.projection import projection_section

                projection_section(session, args.commands, args.rounds, row, produce, drop)
            elif section == "tracing":
                tracing_cost(args.kafka_records, args.rounds)
            else:
                kafka(args.kafka_records, args.rounds)
    finally:
        if restore is not None:
            restore()
        if session is not None:  # connected: what ran is written, even when a section failed
            session.cluster.shutdown()
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(ROWS, indent=1))
            print(f"figures written to {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
