"""``python -m engine.flow``: run the flow as its own process (what ``atp flow`` does, minus the CLI).

Settings come from ``ATP_*`` env vars / ``atp.toml``; the flags override a few. Exit codes: 0 when
the flow ended (a signal, or ``--until-end``), 2 for unusable settings, 1 for an error in the flow.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from connectors.topics import Topics
from engine.flow.runner import FlowConfigError, run_flow
from engine.settings import Settings


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.flow", description=__doc__.splitlines()[0])
    p.add_argument("--workers", "-w", type=int, help="worker threads (ATP_WORKERS)")
    p.add_argument("--batch-size", type=int, help="messages per batch (ATP_BATCH_SIZE)")
    p.add_argument("--recovery-dir", help="bytewax recovery directory (ATP_RECOVERY_DIR)")
    p.add_argument("--snapshot-interval", type=float, help="seconds between snapshots (ATP_SNAPSHOT_INTERVAL_S)")
    p.add_argument("--process-id", "-i", type=int, help="this process's index (several processes)")
    p.add_argument("--addresses", "-a", help="host:port of every process, ';'-separated, in process order")
    p.add_argument("--topic-prefix", default="", help="prefix of every topic name")
    p.add_argument("--topic-suffix", default="", help="suffix of every topic name")
    p.add_argument("--until-end", action="store_true", help="stop once every input partition is read to its end")
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {
        "workers": args.workers,
        "batch_size": args.batch_size,
        "recovery_dir": args.recovery_dir,
        "snapshot_interval_s": args.snapshot_interval,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        topics = Topics(prefix=args.topic_prefix, suffix=args.topic_suffix)
    except (ValidationError, ValueError) as exc:
        print(f"engine.flow: {exc}", file=sys.stderr)
        return 2
    try:
        addresses = [a for a in args.addresses.split(";") if a] if args.addresses else None
        run_flow(settings, topics, until_end=args.until_end, serve_metrics=not args.no_metrics,
                 process_id=args.process_id, addresses=addresses)
    except FlowConfigError as exc:
        print(f"engine.flow: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
