"""The ``rxcqrs`` command: ``services up|down|status|fetch``, ``demo``, ``cart ...`` (the shopping-cart example)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from rxcqrs.exceptions import RxCqrsError

__all__ = ["main"]


def _services(args: argparse.Namespace) -> int:
    from rxcqrs import services

    settings = services.ServicesSettings.from_env()
    names = args.names or None
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, flush=True))
    if args.action == "up":
        for line in services.up(names, settings, say=say):
            print(("reused  " if line.reused else "started ") + line.describe(), flush=True)
        return 0
    if args.action == "down":
        services.down(names, settings, wipe=args.wipe, say=say)
        return 0
    if args.action == "fetch":
        services.fetch(names, settings)
        print(f"jars cached under {settings.jar_cache}")
        return 0
    states = services.status(names, settings)
    for line in states:
        print(line.describe())
    return 0 if all(s.running and s.healthy for s in states) else 3


def _build() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rxcqrs", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    svc = sub.add_parser("services", help="local Apache Kafka 4.x + Apache Cassandra 5.0 (from Maven Central)")
    svc.add_argument("action", choices=["up", "down", "status", "fetch"])
    svc.add_argument("names", nargs="*", choices=[[], "kafka", "cassandra"], metavar="kafka|cassandra",
                     help="which servers (default: both)")
    svc.add_argument("--wipe", action="store_true", help="with down: also delete data and logs")
    svc.add_argument("-q", "--quiet", action="store_true")
    svc.set_defaults(run=_services)

    demo = sub.add_parser("demo", help="the main job: the shopping-cart CQRS story on the local servers")
    demo.set_defaults(run=lambda a: _demo(a))

    cart = sub.add_parser("cart", help="the shopping-cart example (same as python -m rxcqrs.examples.shoppingcart)",
                          add_help=False)
    cart.add_argument("rest", nargs=argparse.REMAINDER)
    cart.set_defaults(run=lambda a: _cart(a.rest))
    return parser


def _demo(_args: argparse.Namespace) -> int:
    from rxcqrs.examples.demo import main as demo_main

    return demo_main()


def _cart(rest: Sequence[str]) -> int:
    from rxcqrs.examples.shoppingcart.cli import main as cart_main

    return cart_main(list(rest))


def main(argv: Sequence[str] | None = None) -> int:
    args = _build().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the drivers log every refused probe while a server starts: expected, not news
        logging.getLogger("cassandra").setLevel(logging.CRITICAL)
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        return int(args.run(args))
    except RxCqrsError as exc:
        print(f"rxcqrs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
