"""The `notifguard` command."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack

from streams.config import load_settings, warn_if_dev_key


def _replay(args: argparse.Namespace) -> int:
    from streams.replay_offline import progress_stream, replay

    settings = load_settings(args.config)
    warn_if_dev_key(settings)
    if not args.offline:
        print("notifguard replay: only --offline is available in this build", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        alerts_out = stack.enter_context(open(args.alerts_out, "wb")) if args.alerts_out else None
        dead_out = (
            stack.enter_context(open(args.deadletter_out, "wb")) if args.deadletter_out else None
        )
        summary, _ = replay(
            args.captures,
            settings,
            alerts_out=alerts_out,
            deadletter_out=dead_out,
            print_alerts=sys.stdout if args.print_alerts else None,
            progress=progress_stream(),
        )
    print(summary.render(), file=sys.stderr if args.print_alerts else sys.stdout)
    return 0


def _scenario_capture(args: argparse.Namespace) -> int:
    from detectors.capture import encode_line
    from streams.scenarios import load

    scenario = load(args.scenario)
    out = open(args.out, "wb") if args.out != "-" else sys.stdout.buffer  # noqa: SIM115
    with out:
        for env in scenario.envelopes():
            out.write(encode_line(env))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notifguard", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="replay captures (kcat -J JSON Lines)")
    r.add_argument("captures", nargs="+", metavar="CAPTURE")
    r.add_argument("--offline", action="store_true", help="run the engine in-process, no Kafka")
    r.add_argument("--alerts-out", metavar="FILE", help="write alerts as JSON Lines")
    r.add_argument("--deadletter-out", metavar="FILE", help="write dead letters as JSON Lines")
    r.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    r.add_argument("--print-alerts", action="store_true", help="print one line per alert")
    r.set_defaults(func=_replay)

    s = sub.add_parser("scenario-capture", help="write a scenario as a kcat -J capture")
    s.add_argument("scenario", help="name in scenarios/ or path to a .toml")
    s.add_argument("--out", default="-")
    s.set_defaults(func=_scenario_capture)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (OSError, ValueError) as err:
        print(f"notifguard {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
