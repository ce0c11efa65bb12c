"""The `tailor` command line: start the suite, create tenants, apply configuration, inspect profiles and decisions.

    tailor up [--no-demo] [--ready-file PATH]
    tailor tenant create NAME [--scopes ingest,decide,admin] [--display-name TEXT]
    tailor apply -f FILE.yaml                  (file shape: see shared/demo.py)
    tailor profile --identity TYPE:VALUE | --unified-id ID [--events N]
    tailor decide --point NAME [--point NAME ...] --identity TYPE:VALUE [--explain] [--test-mode] [--channel web]
    tailor forget --identity TYPE:VALUE | --unified-id ID --yes
    tailor export --identity TYPE:VALUE | --unified-id ID [-o FILE]
    tailor lift-suppression --identity TYPE:VALUE [--identity TYPE:VALUE ...]
    tailor dead-letters list|retry|discard [--reason CODE] [--since ISO] [--until ISO] [--id MESSAGE_ID ...] [--all]
    tailor pipeline status

Client commands talk to the gateway (--gateway, default TAILOR_GATEWAY_ADDR or 127.0.0.1:50051) with an API key
(--api-key, default TAILOR_API_KEY, else the demo key `tailor up` stored). A failed call prints its gRPC status
code, message and field violations and exits with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

from shared.errors import TailorError, status_details

DEFAULT_GATEWAY = "127.0.0.1:50051"


class UsageError(Exception):
    """A command that cannot run as given; printed without a traceback."""


def parse_identity(text: str) -> tuple[str, str]:
    """`type:value` -> (type, value); the value may itself contain colons."""
    kind, sep, value = text.partition(":")
    if not sep or not kind.strip() or not value.strip():
        raise UsageError(f"--identity must look like type:value (for example customer_id:17850), got {text!r}")
    return kind.strip(), value.strip()


def default_api_key() -> str:
    """TAILOR_API_KEY, else the demo key stored by `tailor up`, else empty."""
    key = os.environ.get("TAILOR_API_KEY", "").strip()
    if key:
        return key
    from shared.launcher import demo_key_path

    path = demo_key_path()
    return path.read_text().strip() if path.exists() else ""


def _print_json(message) -> None:
    print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2))


def _api_key(args) -> str:
    key = args.api_key or default_api_key()
    if not key:
        raise UsageError("no API key: pass --api-key, set TAILOR_API_KEY, or run `tailor up` to create the demo key")
    return key


def _auth(args) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {_api_key(args)}"),)


def _who(args):
    from personalization.common.v1 import common_pb2

    if args.unified_id:
        return {"unified_individual_id": args.unified_id}
    if not args.identity:
        raise UsageError("give --identity TYPE:VALUE or --unified-id ID")
    kind, value = parse_identity(args.identity)
    return {"individual_id": common_pb2.Identity(type=kind, value=value)}


async def _profile(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    request = gw.GetProfileRequest(event_limit=args.events, **_who(args))
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).GetProfile(request, metadata=_auth(args), timeout=30)
    _print_json(reply)


async def _forget(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    request = gw.ForgetIndividualRequest(**_who(args))
    if not args.yes:
        raise UsageError("forget erases the individual in every service and cannot be undone: add --yes")
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).ForgetIndividual(request, metadata=_auth(args), timeout=300)
    _print_json(reply)


async def _export(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    request = gw.ExportIndividualRequest(**_who(args))
    async with grpc.aio.insecure_channel(args.gateway, options=[("grpc.max_receive_message_length", 1 << 30)]
                                         ) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).ExportIndividual(request, metadata=_auth(args), timeout=300)
    text = json.dumps(json.loads(reply.json), indent=2, sort_keys=True)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)


def lift_request(identities: list[str]):
    """The LiftSuppression request for `--identity type:value` arguments."""
    from personalization.common.v1 import common_pb2
    from personalization.gateway.v1 import gateway_service_pb2 as gw

    return gw.LiftSuppressionRequest(identities=[common_pb2.Identity(type=k, value=v)
                                                 for k, v in map(parse_identity, identities)])


async def _lift(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    request = lift_request(args.identity)
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).LiftSuppression(request, metadata=_auth(args), timeout=30)
    _print_json(reply)


def decide_request(points: list[str], who: dict, *, explain: bool = False, test_mode: bool = False,
                   channel: str = ""):
    """The GetDecisionsRequest `tailor decide` sends."""
    from personalization.gateway.v1 import gateway_service_pb2 as gw

    flags = ([gw.EXECUTION_FLAG_DIAGNOSTICS] if explain else []) + ([gw.EXECUTION_FLAG_TEST_MODE] if test_mode else [])
    return gw.GetDecisionsRequest(
        personalization_points=[gw.PointRequest(name=p) for p in points],
        execution_flags=flags,
        context=gw.DecisionContext(channel=channel),
        **who,
    )


async def _decide(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    request = decide_request(args.point, _who(args), explain=args.explain, test_mode=args.test_mode,
                             channel=args.channel)
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).GetDecisions(request, metadata=_auth(args), timeout=30)
    _print_json(reply)


async def _apply(args) -> None:
    from shared.demo import apply_config, load_config_file

    config = load_config_file(args.file)
    await apply_config(args.gateway, _api_key(args), config)


async def _tenant_create(args) -> None:
    from services.gateway.admin import create_tenant_with_key
    from shared.launcher import embedded_dsn_if_running

    dsn = os.environ.get("DATABASE_URL") or embedded_dsn_if_running()
    if not dsn:
        raise UsageError("no database: set DATABASE_URL, or start the suite with `tailor up` (embedded PostgreSQL)")
    scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
    created, secret = await create_tenant_with_key(dsn, args.name, args.display_name or args.name, scopes,
                                                   key_name="tailor-cli")
    print(f"tenant {args.name} {'created' if created else 'already existed'}; new API key "
          f"(scopes {', '.join(scopes)}), shown only this once:")
    print(secret)


async def _experiment_report(args) -> None:
    from personalization.decision.v1 import decision_service_pb2 as dec
    from personalization.decision.v1 import decision_service_pb2_grpc as dec_grpc
    from services.decision.report import render_html

    async with grpc.aio.insecure_channel(args.gateway) as channel:
        results = await dec_grpc.DecisionServiceStub(channel).GetExperimentResults(
            dec.GetExperimentResultsRequest(name=args.name), metadata=_auth(args), timeout=30)
    Path(args.output).write_text(render_html(results))
    print(f"experiment {args.name}: report written to {args.output}")


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """A one-line text progress bar: [#####-----]  50%  500/1000."""
    fraction = min(1.0, done / total) if total else (1.0 if done else 0.0)
    filled = int(round(fraction * width))
    return f"[{'#' * filled}{'-' * (width - filled)}] {fraction * 100:5.1f}%  {done}/{total}"


async def _batch_run(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    async with grpc.aio.insecure_channel(args.gateway) as channel:
        stub = gw_grpc.GatewayServiceStub(channel)
        started = await stub.StartBatchJob(gw.StartBatchJobRequest(segment=args.segment, point_names=args.point),
                                           metadata=_auth(args), timeout=30)
        print(f"batch job {started.job.job_id}: segment {args.segment} x {', '.join(args.point)}", flush=True)
        job = started.job
        async for update in stub.WatchBatchJob(gw.WatchBatchJobRequest(job_id=job.job_id), metadata=_auth(args)):
            job = update.job
            end = "\n" if job.state in (gw.BATCH_JOB_STATE_SUCCEEDED, gw.BATCH_JOB_STATE_FAILED) else ""
            print(f"\r{progress_bar(job.processed_count, job.total_count)}  {job.row_count} rows", end=end,
                  flush=True)
    if job.state != gw.BATCH_JOB_STATE_SUCCEEDED:
        raise UsageError(f"batch job {job.job_id} failed: {job.error}")
    print(f"done: {job.row_count} rows; read them with GatewayService/ListBatchResults job_id={job.job_id}")


async def _tenant_quota(args) -> None:
    from services.gateway.quotas import set_quota
    from shared import db
    from shared.launcher import embedded_dsn_if_running

    dsn = os.environ.get("DATABASE_URL") or embedded_dsn_if_running()
    if not dsn:
        raise UsageError("no database: set DATABASE_URL, or start the suite with `tailor up` (embedded PostgreSQL)")
    if args.credits < 0 or args.rate < 0:
        raise UsageError("quotas must be zero (unlimited) or more")
    pool = await db.create_pool(dsn, "gateway", min_size=1, max_size=1)
    try:
        await set_quota(pool, args.name, args.credits, args.rate)
    finally:
        await pool.close()
    print(f"tenant {args.name}: {args.credits or 'unlimited'} decision credits a month, "
          f"{args.rate or 'unlimited'} requests/s")


def _dead_letter_filter(args):
    from google.protobuf import timestamp_pb2

    from personalization.gateway.v1 import gateway_service_pb2 as gw

    f = gw.DeadLetterFilter(reason=(args.reason or "").upper())
    for name, field in (("since", "fail_time_from"), ("until", "fail_time_to")):
        text = getattr(args, name)
        if text:
            ts = timestamp_pb2.Timestamp()
            try:
                ts.FromJsonString(text if "T" in text else f"{text}T00:00:00Z")
            except ValueError:
                raise UsageError(f"--{name} must be an RFC 3339 time such as 2026-12-01T10:00:00Z, got {text!r}")
            getattr(f, field).CopyFrom(ts)
    return f


async def _dead_letters(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    selection = {"message_ids": args.id or [], "filter": _dead_letter_filter(args), "all_matching": args.all}
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        stub = gw_grpc.GatewayServiceStub(channel)
        if args.action == "retry":
            reply = await stub.RetryDeadLetters(gw.RetryDeadLettersRequest(**selection), metadata=_auth(args), timeout=60)
            print(f"{reply.retried_count} dead letters back in the pipeline")
            return
        if args.action == "discard":
            reply = await stub.DiscardDeadLetters(gw.DiscardDeadLettersRequest(**selection), metadata=_auth(args),
                                                  timeout=60)
            print(f"{reply.discarded_count} dead letters discarded")
            return
        token, shown = "", 0
        while shown < args.limit:
            page = await stub.ListDeadLetters(gw.ListDeadLettersRequest(
                filter=selection["filter"], page_size=min(1000, args.limit - shown), page_token=token),
                metadata=_auth(args), timeout=30)
            for letter in page.dead_letters:
                print(f"{letter.fail_time.ToJsonString()}  {letter.message_id}  {letter.reason}  "
                      f"attempts={letter.attempts}  {letter.error[:120]}")
            shown += len(page.dead_letters)
            token = page.next_page_token
            if not token:
                break
        if not shown:
            print("no dead letters")


async def _pipeline_status(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).GetPipelineStatus(
            gw.GetPipelineStatusRequest(), metadata=_auth(args), timeout=10)
    print(f"pending {reply.pending_count} (retrying {reply.retrying_count}), dead letters {reply.dead_letter_count}, "
          f"oldest pending {reply.oldest_pending_seconds:.1f} s")


def _up(args) -> int:
    from shared.launcher import UpOptions, up

    return up(UpOptions(demo=not args.no_demo, ready_file=Path(args.ready_file) if args.ready_file else None))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `tailor`."""
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--gateway", default=os.environ.get("TAILOR_GATEWAY_ADDR") or DEFAULT_GATEWAY,
                        help="gateway address (default: TAILOR_GATEWAY_ADDR or %(default)s)")
    client.add_argument("--api-key", default="",
                        help="API key (default: TAILOR_API_KEY, else the demo key stored by `tailor up`)")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--identity", help="any identity of the individual, as type:value (customer_id:17850)")
    who.add_argument("--unified-id", help="the unified individual id, instead of --identity")

    parser = argparse.ArgumentParser(prog="tailor", description="Tailor personalization engine.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start PostgreSQL, the five services and the demo tenant")
    up.add_argument("--no-demo", action="store_true", help="do not load the demo configuration and data")
    up.add_argument("--ready-file", help="write addresses, API key, pids and start-up seconds here once ready")
    up.set_defaults(run=_up)

    tenant = commands.add_parser("tenant", help="manage tenants")
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_commands.add_parser("create", help="create a tenant (if needed) and a new API key for it")
    create.add_argument("name", help="tenant id: lowercase letters, digits, _ and -")
    create.add_argument("--scopes", default="ingest,decide,admin", help="comma-separated (default: %(default)s)")
    create.add_argument("--display-name", default="", help="a name for people (default: the tenant id)")
    create.set_defaults(run=_tenant_create)
    quota = tenant_commands.add_parser("quota", help="set a tenant's decision-credit and request-rate quotas")
    quota.add_argument("name", help="tenant id")
    quota.add_argument("--credits", type=int, default=0, help="decision credits per month (0: unlimited)")
    quota.add_argument("--rate", type=float, default=0.0, help="requests per second (0: unlimited)")
    quota.set_defaults(run=_tenant_quota)

    experiment = commands.add_parser("experiment", help="experiments")
    experiment_commands = experiment.add_subparsers(dest="experiment_command", required=True)
    report = experiment_commands.add_parser("report", parents=[client],
                                            help="write an experiment's results as an HTML page")
    report.add_argument("name", help="the experiment's name")
    report.add_argument("-o", "--output", default="experiment.html", help="file to write (default: %(default)s)")
    report.set_defaults(run=_experiment_report)

    batch = commands.add_parser("batch", help="batch personalization")
    batch_commands = batch.add_subparsers(dest="batch_command", required=True)
    batch_run = batch_commands.add_parser("run", parents=[client], help="run a batch job and show its progress")
    batch_run.add_argument("--segment", required=True, help="the segment whose members to decide")
    batch_run.add_argument("--point", action="append", required=True, help="a personalization point (repeatable)")
    batch_run.set_defaults(run=_batch_run)

    apply = commands.add_parser("apply", parents=[client], help="apply insights, segments, points and decisions")
    apply.add_argument("-f", "--file", required=True, help="YAML configuration file")
    apply.set_defaults(run=_apply)

    profile = commands.add_parser("profile", parents=[client, who], help="print an individual's profile")
    profile.add_argument("--events", type=int, default=20, help="how many recent events (default: %(default)s)")
    profile.set_defaults(run=_profile)

    decide = commands.add_parser("decide", parents=[client, who], help="ask for decisions, print them as JSON")
    decide.add_argument("--point", action="append", required=True, help="a personalization point (repeatable)")
    decide.add_argument("--explain", action="store_true", help="include the explanation (DIAGNOSTICS flag)")
    decide.add_argument("--test-mode", action="store_true", help="record nothing (TEST_MODE flag)")
    decide.add_argument("--channel", default="", help="the channel asking (web, email, ...)")
    decide.set_defaults(run=_decide)

    forget = commands.add_parser("forget", parents=[client, who],
                                 help="erase an individual in every service; their identities stay suppressed")
    forget.add_argument("--yes", action="store_true", help="confirm: the erasure cannot be undone")
    forget.set_defaults(run=_forget)
    export = commands.add_parser("export", parents=[client, who], help="everything held about an individual, as JSON")
    export.add_argument("-o", "--output", default="", help="write the JSON to this file instead of printing it")
    export.set_defaults(run=_export)
    lift = commands.add_parser("lift-suppression", parents=[client],
                               help="let events with forgotten identities create profiles again")
    lift.add_argument("--identity", action="append", required=True, help="type:value (repeatable)")
    lift.set_defaults(run=_lift)

    dead = commands.add_parser("dead-letters", parents=[client],
                               help="list, retry or discard events the pipeline gave up on")
    dead.add_argument("action", choices=("list", "retry", "discard"))
    dead.add_argument("--reason", help="only this failure reason, a gRPC code name such as INVALID_ARGUMENT")
    dead.add_argument("--since", help="only those that failed at or after this RFC 3339 time")
    dead.add_argument("--until", help="only those that failed before this RFC 3339 time")
    dead.add_argument("--id", action="append", help="a message id (repeatable); retry/discard need ids or --all")
    dead.add_argument("--all", action="store_true", help="retry/discard every dead letter matching the filters")
    dead.add_argument("--limit", type=int, default=100, help="list at most this many (default: %(default)s)")
    dead.set_defaults(run=_dead_letters)

    pipeline = commands.add_parser("pipeline", help="the pipeline's state for the key's tenant")
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    pipeline_status = pipeline_commands.add_parser("status", parents=[client],
                                                   help="events pending, retrying and dead-lettered")
    pipeline_status.set_defaults(run=_pipeline_status)
    return parser


def format_rpc_error(err: grpc.aio.AioRpcError) -> str:
    """The status code, message, ErrorInfo reason and field violations of a failed call, for people."""
    violations, reason = status_details(err)
    lines = [f"error: {err.code().name}: {err.details()}"]
    if reason:
        lines.append(f"  reason: {reason}")
    lines += [f"  {f or '(request)'}: {d}" for f, d in violations]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    """Runs one command and returns its exit code."""
    from shared.demo import ConfigError

    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
            return 0
        return result or 0
    except grpc.aio.AioRpcError as err:
        print(format_rpc_error(err), file=sys.stderr)
    except TailorError as err:  # raised locally, by `tenant create`
        violations = getattr(err, "violations", [])
        print("\n".join([f"error: {err.code.name}: {err.message}"] + [f"  {f}: {d}" for f, d in violations]),
              file=sys.stderr)
    except (UsageError, ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
    except SystemExit as err:  # a settings error (bad TAILOR_* variable) names the variable
        if err.code not in (None, 0) and not isinstance(err.code, int):
            print(f"error: {err.code}", file=sys.stderr)
            return 1
        raise
    return 1


def main() -> None:
    """Entry point of the `tailor` script."""
    sys.exit(run())
