"""``rxcqrs cart project`` and ``rxcqrs cart query``: the query side of the example.

``project`` consumes the carts' event stream (``--events-topic``, as ``consume`` published it) and folds it
into ``carts_by_owner`` and ``item_totals`` (:mod:`rxcqrs.examples.shoppingcart.read_models`); ``query``
reads them back.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_EVENTS_GROUP = "shoppingcart-views"
DEFAULT_EVENTS_TOPIC = "shoppingcart.cmds.events"


def _events_topic(args: argparse.Namespace) -> str:
    return str(args.config.events_topic or DEFAULT_EVENTS_TOPIC)


def project(args: argparse.Namespace) -> int:
    from rxcqrs.examples.shoppingcart.cli import _session, drain_on_signals
    from rxcqrs.examples.shoppingcart.read_models import cart_views
    from rxcqrs.exceptions import SchemaError, TopicNotFoundError
    from rxcqrs.flow import run
    from rxcqrs.kafka import KafkaSink, KafkaSource, SourceSettings, create_topics
    from rxcqrs.kafka.admin import topic_partitions
    from rxcqrs.operators import DeadLetters
    from rxcqrs.progress import Progress

    topic = _events_topic(args)
    if topic_partitions(topic, bootstrap_servers=args.config.kafka_bootstrap) is None:
        raise TopicNotFoundError(f"Kafka topic {topic!r} does not exist: run `rxcqrs cart consume --events-topic "
                                 f"{topic}` first, or check --events-topic")
    with _session(args) as session:
        views = cart_views(session, args.keyspace, topic)
        if args.create_schema:
            views.create_schema()
        elif session.cluster.metadata.keyspaces.get(args.keyspace) is None or \
                "carts_by_owner" not in session.cluster.metadata.keyspaces[args.keyspace].tables:
            raise SchemaError(f"the read models are not in keyspace {args.keyspace!r}: run with --create-schema")
        if args.replay:
            views.truncate()
            print(f"emptied the read models in {args.keyspace}: projecting {topic} again from its beginning",
                  flush=True)
        settings = SourceSettings(drain_timeout=args.drain_timeout, failure_policy="rewind")
        source = KafkaSource(topic, args.config.consumer(args.group), settings)
        create_topics([topic + ".dlq"], bootstrap_servers=args.config.kafka_bootstrap)  # what is not an event
        sink = views.sink(dead_letters=DeadLetters(KafkaSink(producer=args.config.producer())))
        flow = run(source, sink)
        print(f"projecting {topic} as group {args.group} into {args.keyspace}.carts_by_owner and "
              f"{args.keyspace}.item_totals", flush=True)

        progress = Progress(flow, settings.max_in_flight)
        drain_on_signals(flow, args.drain_timeout, progress.message)
        try:
            while not flow.wait_quietly(args.progress_every):
                progress.show()
                if args.stop_when_idle is not None and source.idle_seconds() >= args.stop_when_idle:
                    progress.message(f"idle for {args.stop_when_idle:g}s: draining")
                    flow.stop()
        finally:
            progress.close()
        m = flow.metrics.snapshot()
        print(f"done: {m.get('records_in', 0)} events, {m.get('acked', 0)} acked, {sink.applied} applied to the "
              f"totals, {sink.skipped} skipped (below the stored offset, or a repeat), "
              f"{m.get('dead_lettered', 0)} dead-lettered to {topic}.dlq", flush=True)
        if flow.error is not None:
            print(f"rxcqrs cart: error: {flow.error}", flush=True)
            return 1
        return 0


def query(args: argparse.Namespace) -> int:
    from rxcqrs.examples.shoppingcart.cli import _session
    from rxcqrs.examples.shoppingcart.read_models import ITEM_TOTALS, cart_views

    with _session(args) as session:
        views = cart_views(session, args.keyspace, _events_topic(args))
        if args.owner:
            rows = list(session.execute(f"SELECT cart_id, items, units FROM {args.keyspace}.carts_by_owner "
                                        "WHERE owner = %s", (args.owner,)))
            print(f"owner {args.owner}: {len(rows)} carts")
            for row in rows:
                print(f"  cart {row.cart_id}: {row.items} items, {row.units} units")
        if args.item:
            totals = views.totals(ITEM_TOTALS, (args.item,))
            print(f"item {args.item}: {totals['units']} units in {totals['carts']} carts")
        if not args.owner and not args.item:
            carts = session.execute(f"SELECT count(*) FROM {args.keyspace}.carts_by_owner").one()[0]
            items = views.all_totals(ITEM_TOTALS)
            print(f"{carts} live carts; {len(items)} items in them, {sum(t['units'] for t in items.values())} units")
    return 0


def register_query(sub: Any, common: argparse.ArgumentParser, fmt: Any, keyspace: Any, default_keyspace: str,
                   seconds: Any, interval: Any, uuid_type: Any) -> None:
    p = sub.add_parser("project", parents=[common], formatter_class=fmt,
                       help="fold the carts' event stream into the read models carts_by_owner and item_totals")
    p.add_argument("--keyspace", default=default_keyspace, type=keyspace, help="where the read models live")
    p.add_argument("--group", default=DEFAULT_EVENTS_GROUP, help="the projection's consumer group")
    p.add_argument("--create-schema", action="store_true", help="create the read-model tables if missing")
    p.add_argument("--replay", action="store_true",
                   help="empty the read models, then project the stream again from its beginning, in the same "
                        "group (stop the group's other projectors first)")
    p.add_argument("--stop-when-idle", type=seconds, default=None, metavar="SECONDS",
                   help="drain, commit and exit once idle for SECONDS (the stream read to its end)")
    p.add_argument("--drain-timeout", type=seconds, default=60.0, metavar="SECONDS",
                   help="on SIGTERM/idle, how long to wait for events in flight")
    p.add_argument("--progress-every", type=interval, default=1.0, metavar="SECONDS",
                   help="progress interval (a rebuild into a new --keyspace with a new --group reads the stream from "
                        "its beginning: this shows how far it is)")
    p.set_defaults(run=project)
    q = sub.add_parser("query", parents=[common], formatter_class=fmt, help="read the read models")
    q.add_argument("--keyspace", default=default_keyspace, type=keyspace, help="where the read models live")
    q.add_argument("--owner", type=uuid_type, help="the carts of this owner (carts_by_owner)")
    q.add_argument("--item", type=uuid_type, help="the totals of this item (item_totals)")
    q.set_defaults(run=query)
