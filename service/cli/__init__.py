"""The `cgd` command line: one module per group of subcommands, each with `register(subparsers)`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from service.cli import embed, import_vectors, ingest, migrate, replicas, serve, train

COMMAND_MODULES = (embed, serve, ingest, import_vectors, train, migrate, replicas)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgd", description="CGD image retrieval: embed, train, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cgd` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.handler(args) or 0)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"cgd {args.command}: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
