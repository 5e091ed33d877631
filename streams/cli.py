"""The `notifguard` command."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack

from streams.config import KEY_MIN_BYTES, key_problem, load_settings, warn_if_dev_key
from streams.kafka_access import KafkaAccessError

log = logging.getLogger("notifguard")


def _replay(args: argparse.Namespace) -> int:
    from streams.replay_offline import progress_stream, replay

    settings = load_settings(args.config)
    warn_if_dev_key(settings)
    if not args.offline:
        if args.incidents_out:
            print(
                "notifguard replay: --incidents-out needs --offline (live, `notifguard incidents run` publishes them)",
                file=sys.stderr,
            )
            return 2
        if not args.bootstrap:
            print("notifguard replay: give --offline, or --bootstrap to produce to Kafka", file=sys.stderr)
            return 2
        from streams.staging import replay_to_kafka_command

        return int(replay_to_kafka_command(args, settings))
    with ExitStack() as stack:
        alerts_out = stack.enter_context(open(args.alerts_out, "wb")) if args.alerts_out else None
        dead_out = stack.enter_context(open(args.deadletter_out, "wb")) if args.deadletter_out else None
        incidents_out = stack.enter_context(open(args.incidents_out, "wb")) if args.incidents_out else None
        incidents = None
        if incidents_out is not None:
            from detectors.incidents import Incidents
            from streams.config import load_incident_settings

            incidents = Incidents(load_incident_settings(args.config))
        summary, _ = replay(
            args.captures,
            settings,
            alerts_out=alerts_out,
            deadletter_out=dead_out,
            print_alerts=sys.stdout if args.print_alerts else None,
            progress=progress_stream(),
            jobs=args.jobs,
            incidents_out=incidents_out,
            incidents=incidents,
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


def _worker(args: argparse.Namespace) -> int:
    import dataclasses

    from streams.config import load_worker_config

    config = load_worker_config(args.config)
    overrides = {
        k: v
        for k, v in {
            "bootstrap": args.bootstrap,
            "store": args.store,
            "datadir": args.datadir,
            "web_port": args.web_port,
        }.items()
        if v is not None
    }
    config = dataclasses.replace(config, **overrides)
    problem = key_problem(config.rules)
    if problem is not None:
        if not config.allow_development_key:
            print(
                f"notifguard worker: the pseudonymisation key {problem}: hashes made with it protect nobody. "
                f"Set NOTIFGUARD_PSEUDONYMISATION_KEY (or pseudonymisation_key in the config file) to a secret "
                f"of at least {KEY_MIN_BYTES} bytes, e.g. `openssl rand -hex 32`. Tests and demos can set "
                "allow_development_key = true in the [worker] section (NOTIFGUARD_WORKER_ALLOW_DEVELOPMENT_KEY).",
                file=sys.stderr,
            )
            return 2
        log.warning("the pseudonymisation key %s; allowed by allow_development_key: NOT FOR PRODUCTION", problem)
    from streams.acls import topic_needs, worker_acls
    from streams.kafka_access import check_topics
    from streams.topics import ensure_topics, wait_for_broker

    # A refused login, an untrusted certificate or a missing ACL is named here, within
    # seconds (exit 2), not left to Faust's clients, which retry and never get ready.
    if not wait_for_broker(config.bootstrap, timeout=60, security=config.kafka):
        print(f"notifguard worker: no Kafka broker answers at {config.bootstrap}", file=sys.stderr)
        return 2
    needs = topic_needs(
        worker_acls(config.rules.topics, config.app_id, config.processing_guarantee == "exactly_once", config.incidents)
    )
    groups = [config.app_id]
    if args.create_topics:
        from kafka.errors import KafkaError

        try:
            ensure_topics(
                config.bootstrap,
                config.rules,
                partitions=config.partitions,
                app_id=config.app_id,
                security=config.kafka,
            )
            if config.incidents:  # the incidents computation's (streams/worker/incidents.py)
                from streams.incidents import worker_incident_specs

                ensure_topics(
                    config.bootstrap,
                    config.rules,
                    app_id=config.app_id,
                    specs=worker_incident_specs(config.rules, config.app_id),
                    security=config.kafka,
                )
        except KafkaError:
            check_topics(config.bootstrap, config.kafka, needs)  # a missing ACL: named
            raise
    if config.incidents:
        from streams.topics import incidents_id

        groups.append(incidents_id(config.app_id))
    check_topics(config.bootstrap, config.kafka, needs, groups=groups)
    log.info("kafka: %s at %s", config.kafka.describe(), config.bootstrap)
    from streams.worker import Worker, create_app

    app = create_app(config)
    if args.print_alerts:
        from streams.replay_offline import alert_line

        app.notifguard.pipeline.echo = lambda a: print(alert_line(a), flush=True)
    # stops within config.shutdown_timeout_s of SIGTERM or a crash, or exits 70 (streams.liveness)
    worker = Worker(
        app, shutdown_timeout_s=config.shutdown_timeout_s, loglevel=args.log_level, quiet=True, override_logging=False
    )
    worker.execute_from_commandline()
    return 0


_CHECK_HELP = """\
Replay a scenario or captures into a running system (the input topics a worker
already reads) and wait until the alerts topic shows exactly their alerts.

SCENARIO: a name in scenarios/ or a .toml file. Produced isolated (ids, numbers
and addresses rewritten per run) and rebased so its last event is now; expected:
the scenario's [[expect]] list.

CAPTURE: an existing file that is not a .toml (kcat -C -J JSON Lines, as
`notifguard capture` and `scenario-capture` write), one or more. Produced as
`replay --bootstrap` produces them (--speed, --rebase-time, --rename,
--keep-partitions). Expected: the offline engine's alerts (streams.replay_offline,
with this --config's rules) on exactly the records the broker acknowledged,
renamed and rebased, on the partitions they landed in; compared by dedup_key.
Only alerts whose trigger_event_id is one of the produced records' event_ids
count, so other traffic on a shared alerts topic does not fail the check. The
alerts topic is read read_committed, from its end offsets before producing.
The offline engine starts empty: the worker must hold no state of the capture's
numbers or event ids (a capture checked twice against one worker is all
duplicates the second time).

Exit: 0 exactly the expected alerts (after --settle quiet seconds), 1 some
missing or unexpected (each named: kind, dedup_key, event_time, masked number,
trigger event id), 2 could not check (no broker, topics missing, a capture
topic that is no input topic of the configuration, records rejected, bad options).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notifguard", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="replay captures (kcat -J JSON Lines)")
    r.add_argument("captures", nargs="+", metavar="CAPTURE")
    r.add_argument("--offline", action="store_true", help="run the engine in-process, no Kafka")
    r.add_argument("--alerts-out", metavar="FILE", help="write alerts as JSON Lines")
    r.add_argument("--deadletter-out", metavar="FILE", help="write dead letters as JSON Lines")
    r.add_argument(
        "--incidents-out",
        metavar="FILE",
        help="with --offline: write incident records as JSON Lines (docs/incidents.md)",
    )
    r.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    r.add_argument("--print-alerts", action="store_true", help="print one line per alert")
    r.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        help="with --offline: decode in this process (1) or in a second one (2), same results either way "
        "(default: 2 for 4 MiB of input or more on a machine with two cores)",
    )
    r.add_argument("--bootstrap", metavar="HOST:PORT", help="produce the captures to this Kafka cluster")
    r.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="with --bootstrap: 1 = original pacing, 0 = as fast as possible (default)",
    )
    r.add_argument(
        "--rebase-time",
        metavar="now|RFC3339",
        help="with --bootstrap: shift event times so the first record is at this time",
    )
    r.add_argument(
        "--rename",
        metavar="OLD=NEW",
        action="append",
        default=[],
        help="with --bootstrap: produce records of topic OLD to NEW (repeatable)",
    )
    r.add_argument(
        "--keep-partitions",
        action="store_true",
        help="with --bootstrap: produce to the capture's partition numbers, not by key",
    )
    r.set_defaults(func=_replay)

    c = sub.add_parser("capture", help="capture Kafka topics to a kcat -J capture file")
    c.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    c.add_argument("--topics", required=True, nargs="+")
    c.add_argument("--out", required=True, metavar="FILE")
    c.add_argument("--config", metavar="FILE", help="settings file (TOML), for the [kafka] connection")
    c.add_argument("--from-beginning", action="store_true", default=True)
    c.add_argument(
        "--idle-timeout", type=float, default=5.0, help="stop after this many seconds without a new record (default 5)"
    )
    c.add_argument("--max-records", type=int, default=0)
    c.set_defaults(func=lambda a: __import__("streams.staging", fromlist=["x"]).capture_command(a))

    k = sub.add_parser(
        "check",
        help="replay a scenario or captures into a running system and await exactly their alerts",
        usage="notifguard check (SCENARIO | CAPTURE [CAPTURE ...]) --bootstrap HOST:PORT [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_CHECK_HELP,
    )
    k.add_argument(
        "targets",
        nargs="+",
        metavar="SCENARIO|CAPTURE",
        help="a scenario (name in scenarios/ or a .toml file), or existing capture files (kcat -J)",
    )
    k.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    k.add_argument(
        "--config", metavar="FILE", help="settings file (TOML): the worker's, for topic names and (CAPTURE) the rules"
    )
    k.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the expected alerts (default 60; CAPTURE: once it is produced)",
    )
    k.add_argument(
        "--settle",
        type=float,
        metavar="SECONDS",
        help="quiet seconds after the last expected alert before passing (default max(grace, "
        "idle_flush) + 5, or NOTIFGUARD_CHECK_SETTLE_S)",
    )
    k.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="SCENARIO: replay ids, numbers and addresses as written (default: rewrite them per run)",
    )
    k.add_argument(
        "--speed", type=float, default=0.0, help="CAPTURE: 1 = original pacing, 0 = as fast as possible (default)"
    )
    k.add_argument(
        "--rebase-time",
        metavar="now|RFC3339",
        help="CAPTURE: shift event times as replay --bootstrap does (last record at the time; with --speed, the first)",
    )
    k.add_argument(
        "--rename",
        metavar="OLD=NEW",
        action="append",
        default=[],
        help="CAPTURE: produce records of topic OLD to NEW (repeatable)",
    )
    k.add_argument(
        "--keep-partitions", action="store_true", help="CAPTURE: produce to the capture's partition numbers, not by key"
    )
    k.set_defaults(func=lambda a: __import__("streams.staging", fromlist=["x"]).check_command(a))

    f = sub.add_parser("forward-alerts", help="post notifguard.alerts records to Alertmanager (v2 API)")
    f.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    f.add_argument("--alertmanager", default="http://127.0.0.1:9093", metavar="URL")
    f.add_argument("--config", metavar="FILE", help="settings file (TOML), for topic names")
    f.add_argument("--group", default="notifguard-forwarder", help="consumer group (default notifguard-forwarder)")
    f.add_argument(
        "--resend-interval", type=float, default=60.0, help="re-post active alerts every this many seconds (default 60)"
    )
    f.add_argument(
        "--resolve-after",
        type=float,
        default=3600.0,
        help="let an alert resolve this many seconds after it was first seen (default 3600)",
    )
    f.add_argument("--alertmanager-ca", metavar="FILE", help="CA bundle of an https:// Alertmanager")
    f.add_argument("--alertmanager-cert", metavar="FILE", help="client certificate for Alertmanager (mutual TLS)")
    f.add_argument("--alertmanager-key", metavar="FILE", help="its key")
    f.add_argument("--alertmanager-bearer-file", metavar="FILE", help="send this file's token as a bearer token")
    f.add_argument(
        "--alertmanager-basic-auth-file", metavar="FILE", help="send this file's user:password as HTTP basic auth"
    )
    f.set_defaults(func=lambda a: __import__("streams.forward", fromlist=["x"]).forward_command(a))

    w = sub.add_parser("worker", help="run the streaming detector (Faust) against Kafka")
    w.add_argument("--config", metavar="FILE", help="settings file (TOML; [worker] section for the worker)")
    w.add_argument("--bootstrap", metavar="HOST:PORT")
    w.add_argument("--store", help="rocksdb:// (default) or memory://")
    w.add_argument("--datadir", help="where RocksDB keeps the tables")
    w.add_argument("--web-port", type=int, help="port of /health and /metrics (default 6066)")
    w.add_argument("--print-alerts", action="store_true", help="print one readable line per alert")
    w.add_argument(
        "--no-create-topics", dest="create_topics", action="store_false", help="do not create missing topics at start"
    )
    w.set_defaults(func=_worker)

    from streams.incidents import add_parser as add_incidents_parser

    add_incidents_parser(sub)

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
    except (OSError, ValueError, KafkaAccessError) as err:
        print(f"notifguard {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
