"""``rxcqrs cart`` (or ``python -m rxcqrs.examples.shoppingcart``): produce, consume, show, duplicates, compensate.

Every option has a default for the local servers (``rxcqrs services up``); where the servers are comes from
``--config FILE`` / the environment / ``--bootstrap-servers``, ``--kafka-backend``, ``--contact-points``
(see :mod:`rxcqrs.config`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from rxcqrs.examples.shoppingcart.tuning import BATCHES, GC_THRESHOLD, MAX_POLL_RECORDS, PREFETCH, WINDOW
from rxcqrs.exceptions import RxCqrsError

__all__ = ["main", "consume"]

DEFAULT_TOPIC = "shoppingcart.cmds"
DEFAULT_GROUP = "shoppingcart"
DEFAULT_KEYSPACE = "shoppingcart"
#: seconds the Cassandra driver gets to shut down before the process exits without it
SHUTDOWN_TIMEOUT = 2.0
#: seconds after the drain timeout that a stopping consumer leaves at the latest, whatever still waits
EXIT_MARGIN = 4.5


@contextmanager
def _session(args: argparse.Namespace) -> Iterator[Any]:
    from rxcqrs.cassandra import connect

    session = connect(args.config.cassandra())
    try:
        yield session
    finally:
        # the driver's shutdown waits for its threads (reconnections to a node that does not answer, say):
        # bounded, so that an exit during an outage stays within the drain timeout and a few seconds
        closing = threading.Thread(target=session.cluster.shutdown, name="cassandra-shutdown", daemon=True)
        closing.start()
        closing.join(SHUTDOWN_TIMEOUT)
        if closing.is_alive():  # its worker threads would hold the interpreter's exit too: leave without them
            args.exit_at_once = True


def produce(args: argparse.Namespace) -> int:
    from rxcqrs.examples.shoppingcart.generator import generate
    from rxcqrs.examples.shoppingcart.pipeline import publish_commands
    from rxcqrs.kafka import create_topics

    if args.config.schema_registry:  # registered before anything is created: an incompatible schema stops here
        from rxcqrs.examples.shoppingcart.codec import command_codec

        command_codec(args.config.schema_registry, args.topic)
    create_topics({args.topic: args.partitions}, bootstrap_servers=args.config.kafka_bootstrap)
    commands = generate(args.carts, args.commands, args.seed)
    started = time.monotonic()
    sent = publish_commands(commands, args.topic, args.partitions, args.config.producer(),
                            schema_registry=args.config.schema_registry)
    took = time.monotonic() - started
    print(f"produced {sent} commands for {args.carts} carts to {args.topic} ({args.partitions} partitions, "
          f"seed {args.seed}) in {took:.1f}s ({sent / max(took, 1e-9):.0f}/s)", flush=True)
    return 0


def consume(args: argparse.Namespace) -> int:
    from rxcqrs.gc_tuning import set_young_threshold

    set_young_threshold(GC_THRESHOLD if args.config.gc_threshold is None else args.config.gc_threshold)
    with _session(args) as session:
        return _consume(args, session)


def _prepare_schema(args: argparse.Namespace, store: Any) -> None:
    """Tables are created only on request, and never silently again under a group that already committed:
    a keyspace that vanished after records were committed is lost data, not a first run."""
    from rxcqrs.exceptions import SchemaError
    from rxcqrs.kafka import committed_offsets

    missing = store.missing_tables()
    if not missing:
        return
    committed = committed_offsets(args.group, args.topic, bootstrap_servers=args.config.kafka_bootstrap)
    if any(offset is not None for offset in committed.values()):
        raise SchemaError(f"{', '.join(missing)} missing, but group {args.group!r} has already committed offsets on "
                          f"{args.topic!r}: the records they cover are not in Cassandra any more (lost data, not a "
                          "first run); restore the keyspace, or start over with a new --group and --keyspace")
    if not args.create_schema:
        store.require_schema()
    store.create(args.replication)


def _consume(args: argparse.Namespace, session: Any) -> int:
    from rxcqrs.examples.shoppingcart.pipeline import start_pipeline
    from rxcqrs.examples.shoppingcart.store import CartStore
    from rxcqrs.exceptions import TopicNotFoundError
    from rxcqrs.kafka import KafkaSink, KafkaSource, SourceSettings, create_topics
    from rxcqrs.kafka.admin import topic_partitions
    from rxcqrs.operators import DeadLetters
    from rxcqrs.progress import Progress, serve_metrics

    bootstrap = args.config.kafka_bootstrap
    if topic_partitions(args.topic, bootstrap_servers=bootstrap) is None:
        raise TopicNotFoundError(f"Kafka topic {args.topic!r} does not exist: produce to it first (rxcqrs cart "
                                 "produce), or check --topic")
    events_topic = args.config.events_topic
    store = CartStore(session, args.keyspace, idempotent=args.idempotent, write_protocol=args.config.write_protocol,
                      events_topic=events_topic)
    _prepare_schema(args, store)
    store.claim(args.group)
    create_topics([args.topic + ".dlq"], bootstrap_servers=bootstrap)  # before the first poison record
    if events_topic and topic_partitions(events_topic, bootstrap_servers=bootstrap) is None:
        create_topics({events_topic: topic_partitions(args.topic, bootstrap_servers=bootstrap) or 1},
                      bootstrap_servers=bootstrap)
    window = args.window
    source = KafkaSource(args.topic, args.config.consumer(args.group, max_poll_records=MAX_POLL_RECORDS),
                         SourceSettings(max_in_flight=window, failure_policy=args.on_failure, prefetch=args.prefetch,
                                        batches=args.batches, drain_timeout=args.drain_timeout))
    dead_letter_sink = KafkaSink(producer=args.config.producer())
    flow = start_pipeline(source, store, mode=args.mode, dead_letters=DeadLetters(dead_letter_sink),
                          merge_partitions=args.config.merge_partitions, atomic_batches=args.config.atomic_batches,
                          producer=args.config.producer(), schema_registry=args.config.schema_registry)
    print(f"consuming {args.topic} as group {args.group} into keyspace {args.keyspace} ({args.mode}, "
          f"{'idempotent commands' if args.idempotent else 'read-modify-write commands: repair with compensate'}, "
          f"{store.write_protocol} writes, {source.consumer_settings.backend}"
          f"{f', events to {events_topic}' if events_topic else ''}"
          f"{f', schemas from {args.config.schema_registry}' if args.config.schema_registry else ''})", flush=True)

    progress = Progress(flow, window)
    server = serve_metrics(args.metrics_port, source) if args.metrics_port else None

    drain_on_signals(flow, args.drain_timeout, progress.message)
    try:
        while not flow.wait_quietly(args.progress_every):
            progress.show()
            if args.stop_when_idle is not None and source.idle_seconds() >= args.stop_when_idle:
                progress.message(f"idle for {args.stop_when_idle:g}s (nothing in flight, nothing left to read): "
                                 "draining")
                flow.stop()
    finally:
        progress.close()
        if server is not None:
            server.shutdown()
    dead_letter_sink.on_completed()
    return _report(flow, source, store)


def drain_on_signals(flow: Any, drain_timeout: float, say: Callable[[str], None]) -> None:
    """On SIGTERM or SIGINT: drain ``flow``, and leave at the latest ``drain_timeout`` + a margin later."""

    def stop(signum: int, _frame: Any) -> None:
        say(f"signal {signum}: draining (at most {drain_timeout:g}s)")
        flow.stop()
        # the process ends within the drain timeout and a few seconds, whatever the clients do after it:
        # nothing that is not done was committed, so leaving loses nothing (it is delivered again)
        deadline = threading.Timer(drain_timeout + EXIT_MARGIN, _leave_now, args=(drain_timeout,))
        deadline.daemon = True
        deadline.start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _leave_now(drain_timeout: float) -> None:
    print(f"rxcqrs cart: error: the shutdown took longer than the drain timeout ({drain_timeout:g}s) and "
          f"{EXIT_MARGIN:g}s more; leaving without waiting for the clients (records not committed are delivered "
          "again)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def _report(flow: Any, source: Any, store: Any) -> int:
    m = flow.metrics.snapshot()
    skipped = m.get("redelivered_skipped", 0)
    reapplied = m.get("redelivered_reapplied", 0)
    print(f"done: {m.get('records_in', 0)} records, {m.get('acked', 0)} acked, {m.get('retries', 0)} retries, "
          f"{m.get('dead_lettered', 0)} dead-lettered, {m.get('commits', 0)} commits, {m.get('committed', 0)} "
          f"records committed; outcomes: {m.get('cassandra_unknown', 0)} unknown "
          f"({m.get('unknown_resolved_applied', 0)} resolved applied, {m.get('unknown_resolved_not_applied', 0)} "
          "resolved not applied, "
          f"{m.get('unknown_recorded', 0)} recorded), {m.get('cassandra_permanent', 0)} permanent; redeliveries "
          f"{skipped} skipped, {reapplied} applied again", flush=True)
    if reapplied or m.get("unknown_recorded", 0):
        print(f"!! a rebuild is needed: {reapplied} redelivered commands were applied again and "
              f"{m.get('unknown_recorded', 0)} outcomes stayed unknown; run `rxcqrs cart duplicates` and "
              "`rxcqrs cart compensate`", flush=True)
    if flow.error is not None:
        print(f"rxcqrs cart: error: {flow.error}", file=sys.stderr, flush=True)
    if source.left_behind:
        print(f"stopped with {source.left_behind} records not done; they stay in Kafka and are delivered again "
              "by the next run", flush=True)
    if flow.error is not None:
        return 1
    return 3 if source.left_behind else 0


def show(args: argparse.Namespace) -> int:
    from rxcqrs.examples.shoppingcart.store import CartStore

    with _session(args) as session:
        store = CartStore(session, args.keyspace)
        store.require_schema()
        if args.cart:
            cart_id = args.cart
            found = store.find(cart_id)
            print(f"cart {cart_id}: " + ("not found" if found is None else
                                         f"owner {found[0].owner}, version {found[0].version}, items "
                                         f"{ {str(k): v for k, v in found[0].items.items()} }"))
            for event in sorted(store.log.events(session, cart_id), key=lambda e: e.order):
                print(f"  {event.event_time:%Y-%m-%d %H:%M:%S.%f} {event.payload['action']:<10} "
                      f"owner={event.payload['owner']} item={event.payload['item']} count={event.payload['count']} "
                      f"event={event.event_id} from {event.source[0]}/{event.source[1]}@{event.source[2]}")
            for row in store.rejections(cart_id):
                print(f"  rejected {row.command} from {row.source_topic}/{row.source_partition}@{row.source_offset}: "
                      f"{row.reason}")
            return 0
        count = 0
        for cart_id, cart in store.all_carts():
            count += 1
            if count <= args.limit:
                print(f"{cart_id} owner {cart.owner} version {cart.version:>3} items {len(cart.items)}")
        print(f"{count} carts in {args.keyspace}")
        return 0


def duplicates(args: argparse.Namespace) -> int:
    from rxcqrs.examples.shoppingcart.store import CartStore, cart_event_log

    with _session(args) as session:
        CartStore(session, args.keyspace).require_schema()
        log = cart_event_log(args.keyspace)
        cart = args.cart
        found = list(log.duplicates(session, cart))
        for dup in found:
            print(f"cart {dup.entity_id} event {dup.event_id} at {dup.event_time:%H:%M:%S.%f} logged "
                  f"{dup.times_logged} times")
        unknown = [u for u in log.unknown_outcomes(session) if cart is None or u.entity_id == cart]
        for u in unknown:
            print(f"cart {u.entity_id} event {u.event_id} from {u.source[0]}/{u.source[1]}@{u.source[2]}: outcome "
                  f"unknown ({u.error})")
        print(f"{len(found)} events logged more than once ({sum(d.times_logged - 1 for d in found)} extra rows); "
              f"{len(unknown)} command writes with an unknown outcome")
        return 0


def compensate(args: argparse.Namespace) -> int:
    from rxcqrs.examples.shoppingcart.store import CartStore
    from rxcqrs.exceptions import ConfigError
    from rxcqrs.kafka.admin import group_size

    with _session(args) as session:
        store = CartStore(session, args.keyspace)
        store.require_schema()
        store = CartStore(session, args.keyspace, write_protocol=store.recorded_protocol())
        if store.write_protocol == "fenced":
            members = group_size(args.group, bootstrap_servers=args.config.kafka_bootstrap)
            if members:
                raise ConfigError(f"consumer group {args.group!r} has {members} members: stop them before a rebuild "
                                  "(its writes take the group's next epoch, and a live member's writes would then "
                                  "lose to them silently)")
        unknown = {u.entity_id for u in store.log.unknown_outcomes(session)}
        report = store.rebuilder(group=args.group, topic=args.topic).run()
        for cart_id in unknown:  # every cart was just compared with its event log: these are right now
            store.log.clear_unknown(session, cart_id)
        for cart_id, before, after in report.details:
            print(f"rebuilt cart {cart_id}: {before} -> {after}")
        print(f"compensation (rebuild from the event log): {report.examined} carts examined, {report.rewritten} "
              f"rewritten, {report.unchanged} already right, {report.conflicts} conflicts retried; {len(unknown)} "
              "unknown outcomes settled")
        return 0


# -- the command line -----------------------------------------------------------------------------------------
def _checked(kind: Callable[[str], Any], test: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    """An argparse type: argparse names the flag in the error ("argument --carts: ...")."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value

    return parse


POSITIVE = _checked(int, lambda v: v > 0, "a whole number above 0")
NON_NEGATIVE = _checked(int, lambda v: v >= 0, "a whole number, 0 or more")
SECONDS = _checked(float, lambda v: v >= 0, "a number of seconds, 0 or more")
INTERVAL = _checked(float, lambda v: v > 0, "a number of seconds above 0")
CART = _checked(uuid.UUID, lambda v: True, "a cart id (a UUID such as 4f1c2e9a-...)")
ID = _checked(uuid.UUID, lambda v: True, "an id (a UUID such as 4f1c2e9a-...)")


def _name(kind: str) -> Callable[[str], str]:
    from rxcqrs.exceptions import ConfigError

    def parse(text: str) -> str:
        try:
            if kind == "topic":
                if not text or len(text) > 249 or not all(c.isalnum() or c in "._-" for c in text):
                    raise ConfigError("use 1-249 of [a-zA-Z0-9._-]")
                return text
            from rxcqrs.cassandra.identifiers import identifier

            return identifier(text, kind)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind} name ({exc})") from None

    return parse


def common_options() -> argparse.ArgumentParser:
    """Options every command takes, wherever they are written (``rxcqrs -v cart show`` = ``... show -v``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at INFO, the Kafka and Cassandra clients included")
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="TOML with [kafka] and [cassandra] tables passed to the clients (default $RXCQRS_CONFIG)")
    common.add_argument("--bootstrap-servers", default=argparse.SUPPRESS, metavar="HOST:PORT,...",
                        help="Kafka (default $RXCQRS_KAFKA_BOOTSTRAP or 127.0.0.1:9092)")
    common.add_argument("--kafka-backend", choices=["kafka-python", "confluent"], default=argparse.SUPPRESS,
                        help="the Kafka client (default $RXCQRS_KAFKA_BACKEND or confluent)")
    common.add_argument("--local-dc", default=argparse.SUPPRESS, metavar="NAME",
                        help="Cassandra data center whose nodes serve requests (LOCAL_* levels count its replicas; "
                             "default $RXCQRS_CASSANDRA_LOCAL_DC or datacenter1)")
    common.add_argument("--consistency", default=argparse.SUPPRESS, metavar="LEVEL",
                        help="Cassandra consistency of reads and writes (default LOCAL_QUORUM)")
    common.add_argument("--serial-consistency", default=argparse.SUPPRESS, choices=["SERIAL", "LOCAL_SERIAL"],
                        help="Cassandra consistency of conditional writes (default LOCAL_SERIAL)")
    common.add_argument("--write-protocol", default=argparse.SUPPRESS, choices=["fenced", "conditional"],
                        help="how the command engine writes a cart: fenced (a plain write stamped with the "
                             "assignment's epoch and the offset; the default) or conditional (a lightweight "
                             "transaction per write); a table keeps the protocol that first wrote it (default "
                             "$RXCQRS_WRITE_PROTOCOL or [cassandra] write_protocol)")
    common.add_argument("--merge-partitions", default=argparse.SUPPRESS, type=POSITIVE, metavar="N",
                        help="the command engine sends the single-row writes of several carts that are ready at once "
                             "as one unlogged request spanning up to N partitions (fewer requests per command when "
                             "carts are many; 1: each cart's writes alone, routed token-aware; default 10, "
                             "$RXCQRS_MERGE_PARTITIONS or [cassandra] merge_partitions)")
    common.add_argument("--atomic-batches", default=argparse.SUPPRESS, action=argparse.BooleanOptionalAction,
                        help="fenced writes: each cart's rows of a batch (rejections, events, state, index) go as one "
                             "logged request, all or nothing, instead of one request per step (fewer round trips; "
                             "Cassandra writes a batch log for each; default on, $RXCQRS_ATOMIC_BATCHES or "
                             "[cassandra] atomic_batches)")
    common.add_argument("--events-topic", default=argparse.SUPPRESS, metavar="TOPIC",
                        help="publish every decided cart event to TOPIC (Avro, keyed by the cart; created with the "
                             "command topic's partitions if missing) before its command's writes: the query side's "
                             "event stream (default none, $RXCQRS_EVENTS_TOPIC or [kafka] events_topic)")
    common.add_argument("--schema-registry", default=argparse.SUPPRESS, metavar="URL",
                        help="a Confluent-compatible schema registry (rxcqrs services up registry: "
                             "http://127.0.0.1:8081/apis/ccompat/v7): produce registers the command schema under "
                             "<topic>-value and frames values in the Confluent wire format; consume resolves each "
                             "value's writer schema to the command schema (default raw Avro, "
                             "$RXCQRS_SCHEMA_REGISTRY or [kafka] schema_registry)")
    common.add_argument("--trace", default=argparse.SUPPRESS, choices=["console", "otlp"],
                        help="OpenTelemetry spans per record, children of the producer's traceparent: printed "
                             "(console) or sent to a collector (otlp, $OTEL_EXPORTER_OTLP_ENDPOINT or [tracing] "
                             "endpoint); needs pip install 'rxcqrs[tracing]' (default off, $RXCQRS_TRACE or "
                             "[tracing] exporter)")
    common.add_argument("--contact-points", default=argparse.SUPPRESS, metavar="HOST[:PORT],...",
                        help="Cassandra (default $RXCQRS_CASSANDRA_HOSTS or 127.0.0.1, port $RXCQRS_CASSANDRA_PORT "
                             "or 9042)")
    return common


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add produce / consume / show / duplicates / compensate to ``sub`` (an argparse subparsers object)."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    topic, keyspace = _name("topic"), _name("keyspace")
    p = sub.add_parser("produce", parents=[common], formatter_class=fmt, help="publish a reproducible command stream")
    p.add_argument("--topic", default=DEFAULT_TOPIC, type=topic, help="the command topic (created if missing)")
    p.add_argument("--carts", type=POSITIVE, default=100, help="how many carts")
    p.add_argument("--commands", type=POSITIVE, default=10_000, help="how many commands")
    p.add_argument("--seed", type=int, default=42, help="the same seed gives the same commands")
    p.add_argument("--partitions", type=POSITIVE, default=8, help="partitions of a new topic")
    p.set_defaults(run=produce)

    c = sub.add_parser("consume", parents=[common], formatter_class=fmt, help="run the CQRS pipeline")
    c.add_argument("--topic", default=DEFAULT_TOPIC, type=topic, help="the command topic (must exist)")
    c.add_argument("--group", default=DEFAULT_GROUP, help="the consumer group (offsets are committed per group)")
    c.add_argument("--keyspace", default=DEFAULT_KEYSPACE, type=keyspace, help="where the carts and the log live")
    c.add_argument("--mode", choices=["batched", "parallel", "serial"], default="batched",
                   help="batched: a cart's waiting commands in one conditional write (fastest); parallel: command "
                        "and event log in a broadcast; serial: command, then event")
    c.add_argument("--stop-when-idle", type=SECONDS, default=None, metavar="SECONDS",
                   help="drain, commit and exit once idle for SECONDS: nothing in flight and every partition of the "
                        "topic read to its end by the group")
    c.add_argument("--idempotent", action=argparse.BooleanOptionalAction, default=True,
                   help="skip redelivered commands (exact without repair); --no-idempotent: plain read-modify-write, "
                        "repaired by duplicates + compensate")
    c.add_argument("--create-schema", action="store_true",
                   help="create the keyspace and tables if missing (never under a group that already committed)")
    c.add_argument("--replication", type=POSITIVE, default=1,
                   help="replication factor of a keyspace --create-schema creates (3 on a 3-node cluster)")
    c.add_argument("--gc-threshold", default=argparse.SUPPRESS, type=NON_NEGATIVE, metavar="OBJECTS",
                   help="the cyclic garbage collector's young-generation threshold this process runs with: the "
                        "records in flight die young instead of being traversed by full collections (0: Python's "
                        f"own 700; default {GC_THRESHOLD}, $RXCQRS_GC_THRESHOLD or [process] gc_threshold)")
    c.add_argument("--drain-timeout", type=SECONDS, default=60.0, metavar="SECONDS",
                   help="on SIGTERM/idle, how long to wait for records in flight before exiting without them")
    c.add_argument("--window", type=POSITIVE, default=WINDOW, help="records in flight at most")
    c.add_argument("--on-failure", choices=["stop", "rewind"], default="rewind",
                   help="after a stage gave up on a record: stop the flow, or rewind the partition and retry")
    c.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=PREFETCH,
                   help="poll again while earlier records are still in flight (bounded by --window); "
                        "--no-prefetch: each window is settled before the next poll")
    c.add_argument("--batches", action=argparse.BooleanOptionalAction, default=BATCHES,
                   help="the source emits each partition's polled records as one batch (one ticket, one commit-gate "
                        "entry), taken whole by the decoder and the batched command engine; --no-batches: record by "
                        "record (the same results; more CPU per record)")
    c.add_argument("--progress-every", type=INTERVAL, default=1.0, metavar="SECONDS",
                   help="progress interval (a panel on a terminal, a line per interval otherwise)")
    c.add_argument("--metrics-port", type=_checked(int, lambda v: 0 < v < 65536, "a port number"), default=None,
                   metavar="PORT",
                   help="serve the figures for Prometheus on 127.0.0.1:PORT (pip install rxcqrs[metrics])")
    c.set_defaults(run=consume)

    s = sub.add_parser("show", parents=[common], formatter_class=fmt, help="carts, or one cart with its events")
    s.add_argument("--keyspace", default=DEFAULT_KEYSPACE, type=keyspace, help="the example's keyspace")
    s.add_argument("--cart", type=CART, help="one cart, with its events and rejections")
    s.add_argument("--limit", type=NON_NEGATIVE, default=20, help="carts listed at most")
    s.set_defaults(run=show)

    d = sub.add_parser("duplicates", parents=[common], formatter_class=fmt,
                       help="events logged more than once, and writes with an unknown outcome")
    d.add_argument("--keyspace", default=DEFAULT_KEYSPACE, type=keyspace, help="the example's keyspace")
    d.add_argument("--cart", type=CART, help="only this cart")
    d.set_defaults(run=duplicates)

    k = sub.add_parser("compensate", parents=[common], formatter_class=fmt,
                       help="restore every cart that disagrees with its event log")
    k.add_argument("--keyspace", default=DEFAULT_KEYSPACE, type=keyspace, help="the example's keyspace")
    k.add_argument("--group", default=DEFAULT_GROUP, help="the consumer group that writes the carts (fenced writes: "
                                                          "it must have no members while the rebuild runs)")
    k.add_argument("--topic", default=DEFAULT_TOPIC, type=topic, help="the command topic whose fence the rebuild takes")
    k.set_defaults(run=compensate)

    from rxcqrs.examples.shoppingcart.query_cli import register_query

    register_query(sub, common, fmt, keyspace, DEFAULT_KEYSPACE, SECONDS, INTERVAL, ID)


def execute(args: argparse.Namespace, prog: str) -> int:
    """Run a parsed command: quiet client loggers, settings from the config, errors as one line."""
    from rxcqrs.config import load_config

    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("cassandra", "kafka", "confluent_kafka"):  # their retries are ours to report, in one line
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.CRITICAL)
    try:
        args.config = load_config(getattr(args, "config", None), bootstrap_servers=getattr(args, "bootstrap_servers",
                                                                                           None),
                                  kafka_backend=getattr(args, "kafka_backend", None),
                                  contact_points=getattr(args, "contact_points", None),
                                  consistency=getattr(args, "consistency", None),
                                  serial_consistency=getattr(args, "serial_consistency", None),
                                  local_dc=getattr(args, "local_dc", None),
                                  write_protocol=getattr(args, "write_protocol", None),
                                  merge_partitions=getattr(args, "merge_partitions", None),
                                  atomic_batches=getattr(args, "atomic_batches", None),
                                  events_topic=getattr(args, "events_topic", None),
                                  schema_registry=getattr(args, "schema_registry", None),
                                  trace=getattr(args, "trace", None),
                                  gc_threshold=getattr(args, "gc_threshold", None))
        if args.config.trace:
            from rxcqrs import tracing

            tracing.enable(args.config.trace, service_name=f"rxcqrs {args.run.__name__}",
                           endpoint=args.config.trace_endpoint)
        try:
            code = int(args.run(args))
        finally:
            if args.config.trace:
                tracing.disable()  # every span exported before the exit
        if getattr(args, "exit_at_once", False):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except RxCqrsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head`: the reader went away; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    common = common_options()
    parser = argparse.ArgumentParser(prog="python -m rxcqrs.examples.shoppingcart", description=__doc__,
                                     parents=[common])
    register(parser.add_subparsers(dest="command", required=True), common)
    return execute(parser.parse_args(argv), "rxcqrs cart")


if __name__ == "__main__":
    sys.exit(main())
