"""The ``rxcqrs`` command: ``services up|down|status|fetch``, ``demo``, ``cart ...`` (the shopping-cart example)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main"]


def _services(args: argparse.Namespace) -> int:
    from rxcqrs import services

    overrides = {} if args.nodes is None else {"nodes": args.nodes}
    settings = services.ServicesSettings.from_env(**overrides)
    names = args.names or None
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, flush=True))
    if args.action == "up":
        lines = services.up(names, settings, say=say)
        width = max(len(line.name) for line in lines)
        for line in lines:
            print(("reused  " if line.reused else "started ") + line.describe(width), flush=True)
        if settings.nodes > 1:
            print(f"cluster of {settings.nodes}: --bootstrap-servers {settings.kafka_bootstrap} "
                  f"--contact-points {settings.contact_points} --replication {min(settings.nodes, 3)}")
        return 0
    if args.action == "down":
        services.down(names, settings, wipe=args.wipe, say=say)
        return 0
    if args.action == "fetch":
        services.fetch(names, settings)
        print(f"jars cached under {settings.jar_cache}")
        return 0
    states = services.status(names, settings)
    width = max((len(s.name) for s in states), default=9)
    for line in states:
        print(line.describe(width))
    return 0 if all(s.running and s.healthy for s in states) else 3


def _nodes(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"a node count from 1 to 9, got {text!r}")
    return int(text)


def _build() -> argparse.ArgumentParser:
    from rxcqrs import __version__
    from rxcqrs.examples.shoppingcart.cli import common_options, register

    common = common_options()
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="rxcqrs", description=__doc__, parents=[common], formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"rxcqrs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    svc = sub.add_parser("services", parents=[common], formatter_class=fmt,
                         help="local Apache Kafka 4.x + Apache Cassandra 5.0 (+ a schema registry), from Maven Central")
    svc.add_argument("action", choices=["up", "down", "status", "fetch"])
    svc.add_argument("names", nargs="*", choices=[[], "kafka", "cassandra", "registry", "all"],
                     metavar="kafka|cassandra|registry|all",
                     help="which servers (default: Kafka and Cassandra; the schema registry only when named, or "
                          "with all)")
    svc.add_argument("--nodes", type=_nodes, default=None,
                     help="with up: 3 runs a three-node Kafka and Cassandra on 127.0.0.1-3, same ports (default "
                          "$RXCQRS_NODES or 1); status and down always cover every node in the home")
    svc.add_argument("--wipe", action="store_true", help="with down: also delete data and logs")
    svc.add_argument("-q", "--quiet", action="store_true")
    svc.set_defaults(run=_services)

    demo = sub.add_parser("demo", parents=[common], formatter_class=fmt,
                          help="the main job: the shopping-cart CQRS story on the local servers")
    demo.set_defaults(run=_demo)

    cart = sub.add_parser("cart", parents=[common], formatter_class=fmt,
                          help="the shopping-cart example (also python -m rxcqrs.examples.shoppingcart)")
    register(cart.add_subparsers(dest="cart_command", required=True), common)
    return parser


def _demo(_args: argparse.Namespace) -> int:
    from rxcqrs.examples.demo import main as demo_main

    return demo_main()


def main(argv: Sequence[str] | None = None) -> int:
    from rxcqrs.examples.shoppingcart.cli import execute

    return execute(_build().parse_args(argv), "rxcqrs")


if __name__ == "__main__":
    sys.exit(main())
