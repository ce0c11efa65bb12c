"""The `tailor` command line: start the suite, create tenants, apply configuration, inspect profiles and decisions.

    tailor up [--no-demo] [--ready-file PATH]
    tailor status | down [--timeout SECONDS]    (the suite on TAILOR_HOME, from any terminal)
    tailor tenant create NAME [--scopes ingest,decide,admin] [--display-name TEXT]
    tailor apply -f FILE.yaml                  (file shape: see tailor_cli/demo.py)
    tailor profile --identity TYPE:VALUE | --unified-id ID [--events N]
    tailor decide --point NAME [--point NAME ...] --identity TYPE:VALUE [--explain] [--test-mode] [--channel web]
    tailor forget --identity TYPE:VALUE | --unified-id ID --yes
    tailor export --identity TYPE:VALUE | --unified-id ID [-o FILE]
    tailor lift-suppression --identity TYPE:VALUE [--identity TYPE:VALUE ...]
    tailor dead-letters list|retry|discard [--reason CODE] [--since ISO] [--until ISO] [--id MESSAGE_ID ...] [--all]
    tailor pipeline status
    tailor stats [--window 24h] [--all-tenants] (requests, points served, unique individuals; an admin key, or the
                                                 operator key for --all-tenants)
    tailor replay -f DRAFT.yaml [--window 7d | --start ISO --end ISO] [--max-requests N] [--metric conversion]
                  [--attribution-window 7d] [--json]    (the draft: points and decisions, as `tailor apply` takes)
    tailor ingest -f EVENTS.jsonl|- [--batch-size N] [--bulk]
    tailor import individuals|objects|items|events -f FILE.csv [--map KEY=COLUMN ...] [--mapping FILE.yaml]
                  [--event-type T] [--object-type T] [--checkpoint PATH] [--report PATH] [--restart] [--live]
    tailor recommend [--identity TYPE:VALUE | --unified-id ID] [--item ID] [--cart ID ...] [--recommender NAME]
    tailor train NAME
    tailor tenant list | create NAME | quota NAME --credits N --rate R      (operator key)
    tailor tenant keys | revoke-key KEY_ID | rotate-key KEY_ID              (the tenant's admin key)
    tailor --version

Client commands talk to the gateway (--gateway, default TAILOR_GATEWAY_ADDR or 127.0.0.1:50051) with an API key
(--api-key, default TAILOR_API_KEY, else the demo key `tailor up` stored). A failed call prints its gRPC status
code, message and field violations and exits with code 1; `ingest` and `import` exit with code 2 when rows were
rejected. Operator commands (`tenant create|list|quota`) use --operator-key (default TAILOR_OPERATOR_KEY, else the
file the gateway writes it to at start: TAILOR_OPERATOR_KEY_FILE, which `tailor up` sets to .tailor/operator_key).
Every command is a client of the public gRPC API: nothing here imports a service's modules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
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
    from tailor_cli.launcher import demo_key_path

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
    from tailor_cli.demo import apply_config, load_config_file

    config = load_config_file(args.file)
    await apply_config(args.gateway, _api_key(args), config)


async def _experiment_report(args) -> None:
    from personalization.decision.v1 import decision_service_pb2 as dec
    from personalization.decision.v1 import decision_service_pb2_grpc as dec_grpc
    from tailor_cli.report import render_html

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
                raise UsageError(f"--{name} must be an RFC 3339 time such as 2026-12-01T10:00:00Z, got {text!r}") \
                    from None
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
    print(f"pending {reply.pending_count} (bulk {reply.bulk_pending_count}, retrying {reply.retrying_count}), "
          f"dead letters {reply.dead_letter_count}, oldest pending {reply.oldest_pending_seconds:.1f} s "
          f"(live {reply.oldest_live_pending_seconds:.1f} s)")


# ---- bulk data, recommendations, training, tenants (issue 13, item 5): public API only, no services.* imports ----

class _Version(argparse.Action):
    """--version, reading the installed version only when asked (importlib.metadata costs every other command)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def package_version() -> str:
    """The installed tailor package's version, or `unknown` when run from a tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tailor")
    except PackageNotFoundError:
        return "unknown"


LARGE_MESSAGES = [("grpc.max_send_message_length", 64 * 1024 * 1024),
                  ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
SHOWN_REJECTIONS = 20


def _show_rejections(kind: str):
    shown = 0

    def show(rejected) -> None:
        nonlocal shown
        for r in rejected:
            if shown < SHOWN_REJECTIONS:
                where = r.column or r.field
                print(f"\n{kind} {r.row}: {where + ': ' if where else ''}{r.reason}", file=sys.stderr, end="")
            shown += 1

    return show


async def _ingest(args) -> int:
    from tailor_cli.importer import ingest_jsonl

    if args.batch_size < 1 or args.batch_size > 10_000:
        raise UsageError("--batch-size must be between 1 and 10000")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(args.file)
        if args.file == "-":  # standard input, kept in a file: the reader counts the lines first for the bar
            path = Path(scratch) / "stdin.jsonl"
            path.write_text(sys.stdin.read(), encoding="utf-8")
        elif not path.is_file():
            raise UsageError(f"{args.file}: no such file")
        async with grpc.aio.insecure_channel(args.gateway, options=LARGE_MESSAGES) as channel:
            totals = await ingest_jsonl(channel, _auth(args), path, batch_size=args.batch_size,
                                        show_progress=not args.quiet, on_rejected=_show_rejections("line"),
                                        bulk=args.bulk)
    path = Path(args.file)
    ambiguous = f", stored or duplicate {totals.acknowledged} (before a refused stream message, which does not " \
        "say)" if totals.acknowledged else ""
    print(f"{path}: stored {totals.stored}, duplicate {totals.duplicate}{ambiguous}, rejected {totals.rejected_rows}")
    return 2 if totals.rejected_rows else 0


def import_options(args):
    """The ImportOptions of `tailor import` arguments (the mapping from --mapping, then --map flags over it)."""
    from tailor_cli.importer import ImportOptions, load_mapping_file, parse_map_flags

    columns: dict[str, str] = {}
    constants: dict[str, str] = {}
    if args.mapping:
        data = load_mapping_file(args.mapping)
        columns.update({str(k): str(v) for k, v in (data.get("columns") or {}).items()})
        constants = {k: str(data[k]) for k in ("event_type", "object_type", "source") if data.get(k)}
    columns.update(parse_map_flags(args.map or []))
    if args.batch_size < 1 or args.batch_size > 1000:
        raise UsageError("--batch-size must be between 1 and 1000")
    if args.concurrency < 1 or args.concurrency > 32:
        raise UsageError("--concurrency must be between 1 and 32")
    return ImportOptions(
        kind=args.kind, file=Path(args.file), columns=columns,
        event_type=args.event_type or constants.get("event_type", ""),
        object_type=args.object_type or constants.get("object_type", ""),
        source=args.source or constants.get("source", ""),
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        report=Path(args.report) if args.report else None,
        restart=args.restart, batch_size=args.batch_size, concurrency=args.concurrency,
        show_progress=not args.quiet, bulk=not args.live)


async def _import(args) -> int:
    from tailor_cli.importer import import_csv

    options = import_options(args)
    if not options.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    report = options.report or options.file.with_name(options.file.name + ".rejected.csv")
    async with grpc.aio.insecure_channel(args.gateway, options=LARGE_MESSAGES) as channel:
        totals = await import_csv(channel, _auth(args), options)
    stored = "upserted" if options.kind == "items" else "stored"
    line = f"{options.file}: {stored} {totals.stored}"
    if options.kind != "items":
        line += f", duplicate {totals.duplicate}"
    line += f", rejected {totals.rejected_rows}"
    if totals.skipped:
        line += f" (resumed after row {totals.skipped})"
    print(line)
    if totals.rejected_rows:
        print(f"rejected rows and reasons: {report}")
        return 2
    return 0


def recommend_request(args):
    """The GetRecommendationsRequest `tailor recommend` sends."""
    from personalization.common.v1 import common_pb2
    from personalization.gateway.v1 import gateway_service_pb2 as gw

    request = gw.GetRecommendationsRequest(
        unified_individual_id=args.unified_id or "", recommender=args.recommender or "", count=args.count,
        anchor_item_id=args.item or "", cart_item_ids=args.cart or [], exclude_item_ids=args.exclude or [],
        exclude_purchased=args.exclude_purchased, item_attributes=args.attribute or [], channel=args.channel,
        execution_flags=([gw.EXECUTION_FLAG_DIAGNOSTICS] if args.explain else [])
        + ([gw.EXECUTION_FLAG_TEST_MODE] if args.test_mode else []))
    if args.identity:
        kind, value = parse_identity(args.identity)
        request.individual_id.CopyFrom(common_pb2.Identity(type=kind, value=value))
    return request


async def _recommend(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    request = recommend_request(args)
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).GetRecommendations(request, metadata=_auth(args),
                                                                              timeout=30)
    if args.json:
        _print_json(reply)
        return
    who = reply.unified_individual_id or "anonymous"
    print(f"{reply.recommender} for {who}: {len(reply.items)} items")
    for rank, item in enumerate(reply.items, start=1):
        attributes = json_format.MessageToDict(item.attributes)
        extra = "  " + " ".join(f"{k}={v}" for k, v in attributes.items()) if attributes else ""
        print(f"{rank:>3}  {item.item_id}  {item.score:.4g}  {item.source}{extra}")
    for d in reply.diagnostics:
        print(f"note: {gw.DiagnosticCode.Name(d.code).removeprefix('DIAGNOSTIC_CODE_')}: {d.message}")
    if reply.HasField("trace"):
        removed = ", ".join(f"{f.filter} -{f.removed}" for f in reply.trace.filters) or "none"
        print(f"ran: {' -> '.join(reply.trace.recommenders)}; filtered: {removed}; "
              f"diversity -{reply.trace.diversity_removed}")


async def _train(args) -> None:
    from tqdm import tqdm

    from personalization.recommender.v1 import recommender_service_pb2 as rec
    from personalization.recommender.v1 import recommender_service_pb2_grpc as rec_grpc

    last = None
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        stream = rec_grpc.RecommenderServiceStub(channel).TrainRecommender(
            rec.TrainRecommenderRequest(name=args.name), metadata=_auth(args), timeout=args.timeout)
        with tqdm(total=100, unit="%", desc=f"train {args.name}", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                  "{elapsed} {postfix}", disable=args.quiet, dynamic_ncols=True) as bar:
            async for step in stream:
                bar.update(round(step.fraction * 100) - bar.n)
                bar.set_postfix_str(f"{step.stage}: {step.message}"[:60])
                last = step
    if last is None or not last.model_version:
        raise UsageError(f"training {args.name} ended without a model version")
    print(f"{args.name}: model version {last.model_version} trained on {last.interactions} interactions "
          f"({last.individuals} individuals, {last.items} items)")


def operator_key(args) -> str:
    """--operator-key, else TAILOR_OPERATOR_KEY, else the operator key the gateway stored (TAILOR_OPERATOR_KEY_FILE,
    else .tailor/operator_key under `tailor up`); empty when none."""
    key = getattr(args, "operator_key", "") or os.environ.get("TAILOR_OPERATOR_KEY", "").strip()
    if key:
        return key
    from tailor_cli.launcher import operator_key_path

    path = operator_key_path()
    return path.read_text().strip() if path.exists() else ""


def _operator_auth(args) -> tuple[tuple[str, str], ...]:
    key = operator_key(args)
    if not key:
        raise UsageError("no operator key: pass --operator-key, set TAILOR_OPERATOR_KEY, or run `tailor up`, which "
                         "stores one in .tailor/operator_key")
    return (("authorization", f"Bearer {key}"),)


SCOPE_FLAGS = {"ingest": 1, "decide": 2, "admin": 3}  # gateway.v1.Scope values


def parse_scopes(text: str) -> list[str]:
    """`ingest,decide` -> ["ingest", "decide"]; an unknown scope is a usage error."""
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in scopes if s not in SCOPE_FLAGS]
    if not scopes or bad:
        raise UsageError(f"--scopes takes a comma-separated list of {', '.join(SCOPE_FLAGS)}, got {text!r}")
    return scopes


async def _tenant_create(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    scopes = parse_scopes(args.scopes)
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).CreateTenant(gw.CreateTenantRequest(
            tenant_id=args.name, display_name=args.display_name or args.name,
            scopes=[SCOPE_FLAGS[s] for s in scopes], key_display_name="tailor-cli"),
            metadata=_operator_auth(args), timeout=30)
    print(f"tenant {args.name} {'created' if reply.created else 'already existed'}; new API key "
          f"(scopes {', '.join(scopes)}), shown only this once:")
    print(reply.secret)


async def _tenant_list(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    token, rows = "", []
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        stub = gw_grpc.GatewayServiceStub(channel)
        while True:
            page = await stub.ListTenants(gw.ListTenantsRequest(page_size=1000, page_token=token),
                                          metadata=_operator_auth(args), timeout=30)
            rows += page.tenants
            token = page.next_page_token
            if not token:
                break
    if args.json:
        print(json.dumps([json_format.MessageToDict(t, preserving_proto_field_name=True) for t in rows], indent=2))
        return
    print(f"{'tenant':<24} {'keys':>4} {'credits used/limit':>22} {'rate/s':>8}  created")
    for t in rows:
        limit = t.decision_credit_limit or "unlimited"
        rate = f"{t.request_rate_limit:g}" if t.request_rate_limit else "unlimited"
        print(f"{t.tenant_id:<24} {t.active_key_count:>4} {f'{t.decision_credits_used}/{limit}':>22} {rate:>8}  "
              f"{t.create_time.ToJsonString()[:10]}")


async def _tenant_quota(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    if args.credits < 0 or args.rate < 0:
        raise UsageError("quotas must be zero (unlimited) or more")
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).SetTenantQuota(gw.SetTenantQuotaRequest(
            tenant_id=args.name, decision_credit_limit=args.credits, request_rate_limit=args.rate),
            metadata=_operator_auth(args), timeout=30)
    t = reply.tenant
    print(f"tenant {t.tenant_id}: {t.decision_credit_limit or 'unlimited'} decision credits a month, "
          f"{f'{t.request_rate_limit:g}' if t.request_rate_limit else 'unlimited'} requests/s")


async def _revoke_key(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).RevokeApiKey(gw.RevokeApiKeyRequest(key_id=args.key_id),
                                                                      metadata=_auth(args), timeout=30)
    print(f"key {reply.api_key.key_id} revoked at {reply.api_key.revoke_time.ToJsonString()}")


async def _rotate_key(args) -> None:
    """A new key with the old one's scopes and name, then the old one revoked (the new secret is printed once)."""
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    async with grpc.aio.insecure_channel(args.gateway) as channel:
        stub = gw_grpc.GatewayServiceStub(channel)
        old, token = None, ""
        while old is None:
            page = await stub.ListApiKeys(gw.ListApiKeysRequest(page_size=1000, page_token=token),
                                          metadata=_auth(args), timeout=30)
            old = next((k for k in page.api_keys if k.key_id == args.key_id), None)
            token = page.next_page_token
            if not token:
                break
        if old is None or old.HasField("revoke_time"):
            raise UsageError(f"no valid key {args.key_id} in this tenant (see `tailor tenant keys`)")
        new = await stub.CreateApiKey(gw.CreateApiKeyRequest(display_name=old.display_name, scopes=old.scopes),
                                      metadata=_auth(args), timeout=30)
        await stub.RevokeApiKey(gw.RevokeApiKeyRequest(key_id=old.key_id), metadata=_auth(args), timeout=30)
    print(f"key {old.key_id} revoked; its replacement {new.api_key.key_id} (same scopes), shown only this once:")
    print(new.secret)


async def _list_keys(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    token = ""
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        stub = gw_grpc.GatewayServiceStub(channel)
        while True:
            page = await stub.ListApiKeys(gw.ListApiKeysRequest(page_size=1000, page_token=token),
                                          metadata=_auth(args), timeout=30)
            for k in page.api_keys:
                scopes = ",".join(gw.Scope.Name(s).removeprefix("SCOPE_").lower() for s in k.scopes)
                state = f"revoked {k.revoke_time.ToJsonString()}" if k.HasField("revoke_time") else "valid"
                print(f"{k.key_id}  {scopes:<20} {k.display_name:<20} {k.create_time.ToJsonString()}  {state}")
            token = page.next_page_token
            if not token:
                break


def _up(args) -> int:
    from tailor_cli.launcher import UpOptions, up

    return up(UpOptions(demo=not args.no_demo, ready_file=Path(args.ready_file) if args.ready_file else None))


async def _db_bootstrap(args) -> None:
    from shared import db_roles

    if not args.admin_url:
        raise UsageError("--admin-url (or TAILOR_DB_ADMIN_URL) is required")
    env = await db_roles.bootstrap_env_file(args.admin_url, Path(args.out), rotate=args.rotate)
    print(f"roles ready; {len(env)} URLs written to {args.out} (mode 0600): "
          + ", ".join(sorted(env)))


def parse_window(text: str) -> int:
    """`24h`, `7d`, `30m`, `90s` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) < 1:
        raise UsageError(f"--window takes a number and a unit (s, m, h or d), such as 24h or 7d; got {text!r}")
    return int(number) * units[unit]


async def _stats(args) -> None:
    """Requests, points served and distinct individuals of the key's tenant over a window (GetUsageStats); with
    --all-tenants, every tenant's (ListTenants, then GetUsageStats naming each, with the operator key)."""
    from google.protobuf import timestamp_pb2

    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    end = timestamp_pb2.Timestamp()
    end.GetCurrentTime()
    start = timestamp_pb2.Timestamp(seconds=end.seconds - parse_window(args.window), nanos=end.nanos)
    if args.all_tenants:
        await _stats_all_tenants(args, gw.GetUsageStatsRequest(start_time=start, end_time=end))
        return
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).GetUsageStats(
            gw.GetUsageStatsRequest(start_time=start, end_time=end), metadata=_auth(args), timeout=60)
    if args.json:
        _print_json(reply)
        return
    print(f"tenant {reply.tenant_id}, last {args.window} ({reply.start_time.ToJsonString()[:19]}Z to "
          f"{reply.end_time.ToJsonString()[:19]}Z):")
    print(f"  requests {reply.request_count}, points served {reply.served_count}, "
          f"unique individuals {reply.unique_individuals}")
    if reply.points:
        width = max(len(p.point_name) for p in reply.points)
        print(f"  {'point':<{width}}  {'served':>10}  {'individuals':>11}")
        for p in reply.points:
            print(f"  {p.point_name:<{width}}  {p.served_count:>10}  {p.unique_individuals:>11}")


async def _stats_all_tenants(args, window) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    auth = _operator_auth(args)
    replies, token = [], ""
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        stub = gw_grpc.GatewayServiceStub(channel)
        while True:
            page = await stub.ListTenants(gw.ListTenantsRequest(page_size=1000, page_token=token), metadata=auth,
                                          timeout=30)
            for tenant in page.tenants:
                request = gw.GetUsageStatsRequest()
                request.CopyFrom(window)
                request.tenant_id = tenant.tenant_id
                replies.append(await stub.GetUsageStats(request, metadata=auth, timeout=60))
            token = page.next_page_token
            if not token:
                break
    if args.json:
        print(json.dumps([json_format.MessageToDict(r, preserving_proto_field_name=True) for r in replies], indent=2))
        return
    print(f"every tenant, last {args.window} ({window.start_time.ToJsonString()[:19]}Z to "
          f"{window.end_time.ToJsonString()[:19]}Z):")
    width = max([len("tenant")] + [len(r.tenant_id) for r in replies])
    print(f"  {'tenant':<{width}}  {'requests':>10}  {'served':>10}  {'individuals':>11}")
    for r in replies:
        print(f"  {r.tenant_id:<{width}}  {r.request_count:>10}  {r.served_count:>10}  {r.unique_individuals:>11}")
    print(f"  {'all':<{width}}  {sum(r.request_count for r in replies):>10}  "
          f"{sum(r.served_count for r in replies):>10}  {'':>11}")
def _replay_window(args):
    """(start, end) Timestamps from --start/--end (RFC 3339) or the --window before now."""
    from google.protobuf import timestamp_pb2

    end = timestamp_pb2.Timestamp()
    start = timestamp_pb2.Timestamp()
    try:
        if args.end:
            end.FromJsonString(args.end)
        else:
            end.GetCurrentTime()
        if args.start:
            start.FromJsonString(args.start)
        else:
            start.FromSeconds(end.seconds - parse_window(args.window))
    except ValueError as err:
        raise UsageError(f"--start and --end take RFC 3339 times such as 2026-03-01T00:00:00Z ({err})") from None
    return start, end


def replay_request(args):
    """The ReplayDecisions request of `tailor replay`: the draft file's points and decisions and the window."""
    from personalization.decision.v1 import decision_service_pb2 as dec
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from tailor_cli.demo import load_config_file

    config = load_config_file(args.file)
    if config.insights or config.segments or config.others:
        raise UsageError(f"{args.file}: a draft holds points and decisions only")
    start, end = _replay_window(args)
    metric = 0
    if args.metric:
        name = "METRIC_" + args.metric.upper().replace("-", "_")
        if name not in dec.Metric.keys():
            raise UsageError("--metric takes click_through, conversion or revenue_per_individual")
        metric = dec.Metric.Value(name)
    request = gw.ReplayDecisionsRequest(
        points=[r.point for r in config.points], decisions=[r.decision for r in config.decisions],
        start_time=start, end_time=end, max_requests=args.max_requests, metric=metric)
    request.attribution_window.FromSeconds(parse_window(args.attribution_window) if args.attribution_window else 0)
    return request


def format_replay(reply) -> str:
    """The replay report for people: one block per point."""
    from personalization.decision.v1 import decision_service_pb2 as dec

    lines = [f"replayed {reply.replayed_requests} logged requests"
             + (" (the window held more: only the oldest were replayed)" if reply.truncated else "")]
    for p in reply.points:
        metric = dec.Metric.Name(p.metric).removeprefix("METRIC_").lower()
        lines.append(f"point {p.point_name}: {p.replayed_requests} requests, {p.changed_requests} would change "
                     f"({p.changed_share * 100:.1f}%)")
        for label, counts in (("gained", p.gained), ("lost", p.lost)):
            if counts:
                lines.append(f"  {label}: " + ", ".join(f"{c.decision_id or '(nothing)'} {c.count}" for c in counts))
        lines.append(f"  {metric}: logged {p.logged_value:.4f}, draft {p.draft_value:.4f}, effect "
                     f"{p.estimated_effect:+.4f} over {p.estimated_requests} requests "
                     f"({p.randomized_requests} randomized)")
        if p.unestimated:
            lines.append("  not estimated: " + ", ".join(f"{u.reason} {u.count}" for u in p.unestimated))
    return "\n".join(lines)


async def _replay(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

    request = replay_request(args)
    async with grpc.aio.insecure_channel(args.gateway) as channel:
        reply = await gw_grpc.GatewayServiceStub(channel).ReplayDecisions(request, metadata=_auth(args),
                                                                          timeout=args.timeout)
    if args.json:
        _print_json(reply)
    else:
        print(format_replay(reply))


def _down(args) -> int:
    from tailor_cli.launcher import down

    return down(timeout=args.timeout)


async def _status(args) -> int:
    """Prints each process of the suite on TAILOR_HOME; exit 0 when all serve, 1 when one does not, 3 when no
    launcher runs."""
    from tailor_cli.launcher import state_path, suite_status, tailor_home

    launcher, rows = await suite_status()
    print(f"tailor up (pid {launcher}), home {tailor_home()}" if launcher else
          f"no tailor up is running (home {tailor_home()})")
    if rows:
        width = max(len(r.name) for r in rows)
        print(f"  {'process':<{width}}  {'pid':>7}  {'port':>5}  {'metrics':>7}  health")
        for r in rows:
            print(f"  {r.name:<{width}}  {r.pid or '-':>7}  {r.port:>5}  {r.metrics_port or '-':>7}  {r.health}")
    if launcher and not args.no_pipeline:
        await _status_pipeline(args)
    if launcher is None:
        if rows:
            print("`tailor down` stops what is left")
        elif state_path().exists():
            state_path().unlink()
        return 3
    return 0 if all(r.health == "SERVING" for r in rows) else 1


async def _status_pipeline(args) -> None:
    from personalization.gateway.v1 import gateway_service_pb2 as gw
    from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
    from tailor_cli.launcher import read_state

    key = args.api_key or default_api_key()
    if not key:
        return
    gateway = args.gateway
    if gateway == DEFAULT_GATEWAY and not os.environ.get("TAILOR_GATEWAY_ADDR"):
        gateway = (read_state() or {}).get("gateway") or gateway  # where the running suite listens
    async with grpc.aio.insecure_channel(gateway) as channel:
        try:
            reply = await gw_grpc.GatewayServiceStub(channel).GetPipelineStatus(
                gw.GetPipelineStatusRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=5)
        except grpc.aio.AioRpcError as err:
            print(f"pipeline: {err.code().name}: {err.details()}")
            return
    print(f"pipeline (the key's tenant): {reply.pending_count} pending ({reply.bulk_pending_count} bulk), "
          f"{reply.retrying_count} retrying, {reply.dead_letter_count} dead letters, oldest pending "
          f"{reply.oldest_pending_seconds:.1f} s (live {reply.oldest_live_pending_seconds:.1f} s)")


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
    down = commands.add_parser("down", help="stop the suite `tailor up` runs (from any terminal), and PostgreSQL")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds to wait before killing (default: 60)")
    down.set_defaults(run=_down)
    status = commands.add_parser("status", parents=[client],
                                 help="each process of the running suite: pid, port, health; the pipeline")
    status.add_argument("--no-pipeline", action="store_true", help="do not ask the gateway for the pipeline state")
    status.set_defaults(run=_status)

    database = commands.add_parser("db", help="database administration")
    database_commands = database.add_subparsers(dest="db_command", required=True)
    bootstrap = database_commands.add_parser(
        "bootstrap", help="create each service's database roles and schema; write their URLs to an env file",
        description="Creates (or repairs) per service schema an owner role, which runs migrations, and a login "
                    "role with rights on that schema's rows only, then writes TAILOR_<SERVICE>_DATABASE_URL and "
                    "TAILOR_<SERVICE>_MIGRATE_URL lines to --out (mode 0600). Passwords already in that file are "
                    "kept and set again; run it again at any time.")
    bootstrap.add_argument("--admin-url", default=os.environ.get("TAILOR_DB_ADMIN_URL", ""),
                           help="URL of an administrator of the database (a superuser, or a role with CREATEROLE "
                                "that owns the database); default TAILOR_DB_ADMIN_URL")
    bootstrap.add_argument("--out", required=True, help="the env file to write (mode 0600)")
    bootstrap.add_argument("--rotate", action="store_true", help="new passwords for every role")
    bootstrap.set_defaults(run=_db_bootstrap)

    operator = argparse.ArgumentParser(add_help=False)
    operator.add_argument("--gateway", default=os.environ.get("TAILOR_GATEWAY_ADDR") or DEFAULT_GATEWAY,
                          help="gateway address (default: TAILOR_GATEWAY_ADDR or %(default)s)")
    operator.add_argument("--operator-key", default="",
                          help="operator key (default: TAILOR_OPERATOR_KEY, else the one `tailor up` stored)")
    tenant = commands.add_parser("tenant", help="manage tenants (operator) and the tenant's own API keys")
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_commands.add_parser("create", parents=[operator],
                                        help="create a tenant (if needed) and a new API key for it")
    create.add_argument("name", help="tenant id: lowercase letters, digits, _ and -")
    create.add_argument("--scopes", default="ingest,decide,admin", help="comma-separated (default: %(default)s)")
    create.add_argument("--display-name", default="", help="a name for people (default: the tenant id)")
    create.set_defaults(run=_tenant_create)
    quota = tenant_commands.add_parser("quota", parents=[operator],
                                       help="set a tenant's decision-credit and request-rate quotas")
    quota.add_argument("name", help="tenant id")
    quota.add_argument("--credits", type=int, default=0, help="decision credits per month (0: unlimited)")
    quota.add_argument("--rate", type=float, default=0.0, help="requests per second (0: unlimited)")
    quota.set_defaults(run=_tenant_quota)
    _add_tenant_commands(tenant_commands, client, operator)

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

    stats = commands.add_parser("stats", parents=[client],
                                help="requests, points served and unique individuals of the key's tenant")
    stats.add_argument("--window", default="24h", help="how far back: 90s, 30m, 24h, 7d (default: %(default)s)")
    stats.add_argument("--json", action="store_true", help="print the response as JSON")
    stats.add_argument("--all-tenants", action="store_true",
                       help="every tenant's, one line each (needs the operator key, not --api-key)")
    stats.add_argument("--operator-key", default="",
                       help="operator key for --all-tenants (default: TAILOR_OPERATOR_KEY, else the stored one)")
    stats.set_defaults(run=_stats)

    replay = commands.add_parser("replay", parents=[client],
                                 help="what a draft of points and decisions would have served to logged requests")
    replay.add_argument("-f", "--file", required=True, help="the draft: a YAML file of points and their decisions")
    replay.add_argument("--window", default="7d", help="how far back, when --start is not given (default: %(default)s)")
    replay.add_argument("--start", default="", help="start of the window, RFC 3339")
    replay.add_argument("--end", default="", help="end of the window, RFC 3339 (default: now)")
    replay.add_argument("--max-requests", type=int, default=0, help="replay at most this many (default: 10,000)")
    replay.add_argument("--metric", default="", help="click_through, conversion or revenue_per_individual "
                        "(default: each point's experiment's primary metric, else conversion)")
    replay.add_argument("--attribution-window", default="", help="how long after a request outcomes count (7d)")
    replay.add_argument("--timeout", type=float, default=600, help="seconds to wait (default: %(default)s)")
    replay.add_argument("--json", action="store_true", help="print the response as JSON")
    replay.set_defaults(run=_replay)

    pipeline = commands.add_parser("pipeline", help="the pipeline's state for the key's tenant")
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    pipeline_status = pipeline_commands.add_parser("status", parents=[client],
                                                   help="events pending, retrying and dead-lettered")
    pipeline_status.set_defaults(run=_pipeline_status)
    _add_data_commands(commands, client, who)
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    return parser


def _add_tenant_commands(tenant_commands, client, operator) -> None:
    listing = tenant_commands.add_parser("list", parents=[operator], help="every tenant, its quotas and usage")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_tenant_list)
    keys = tenant_commands.add_parser("keys", parents=[client], help="the API keys of the key's tenant")
    keys.set_defaults(run=_list_keys)
    revoke = tenant_commands.add_parser("revoke-key", parents=[client],
                                        help="revoke one of the tenant's API keys (needs an admin key)")
    revoke.add_argument("key_id", help="the key id (the part after tlr_, see `tailor tenant keys`)")
    revoke.set_defaults(run=_revoke_key)
    rotate = tenant_commands.add_parser("rotate-key", parents=[client],
                                        help="replace an API key by a new one with the same scopes, then revoke it")
    rotate.add_argument("key_id", help="the key id to replace")
    rotate.set_defaults(run=_rotate_key)


def _add_data_commands(commands, client, who) -> None:
    ingest = commands.add_parser("ingest", parents=[client],
                                 help="send a JSON-lines file of events (one Event per line) over a stream")
    ingest.add_argument("-f", "--file", required=True, help="the .jsonl file (- for standard input)")
    ingest.add_argument("--batch-size", type=int, default=500, help="events per stream message (default: %(default)s)")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.add_argument("--bulk", action="store_true", help="a backfill: the events are acknowledged as fast as "
                        "they arrive and applied behind live events")
    ingest.set_defaults(run=_ingest)

    imp = commands.add_parser("import", parents=[client], help="import a CSV file of individuals, profile objects, "
                              "items or events (resumable; rejected rows are reported)")
    imp.add_argument("kind", choices=("individuals", "objects", "items", "events"))
    imp.add_argument("-f", "--file", required=True, help="the CSV file (with a header row)")
    imp.add_argument("--map", action="append", metavar="KEY=COLUMN",
                     help="which column feeds a field: identity.<type>, attribute.<name>[:number|bool], "
                          "property.<name>[:type], time, type, name, item_id, quantity, unit_price, object_id, "
                          "message_id, source (repeatable; without any, columns named like keys are used)")
    imp.add_argument("--mapping", help="a YAML file: columns: {KEY: COLUMN}, event_type, object_type, source")
    imp.add_argument("--event-type", default="", help="events: the type of every row (purchase, page_view, ...)")
    imp.add_argument("--object-type", default="", help="objects: the profile object type (order, case, ...)")
    imp.add_argument("--source", default="", help="the source recorded on every row (default: import)")
    imp.add_argument("--checkpoint", help="checkpoint file (default: FILE.checkpoint.json)")
    imp.add_argument("--report", help="rejected rows report (default: FILE.rejected.csv)")
    imp.add_argument("--restart", action="store_true", help="ignore the checkpoint and start from the first row")
    imp.add_argument("--batch-size", type=int, default=1000, help="rows per request (default: %(default)s)")
    imp.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.add_argument("--live", action="store_true", help="apply the events like live ones (by default an import "
                     "is a backfill: acknowledged as fast as it is sent, applied behind live events)")
    imp.set_defaults(run=_import)

    recommend = commands.add_parser("recommend", parents=[client, who],
                                    help="items for an individual, like an item (--item) or for a cart (--cart)")
    recommend.add_argument("--recommender", default="", help="a configured recommender or a built-in strategy "
                           "(default: similar_attributes with --item, co_bought with --cart, else top_sellers)")
    recommend.add_argument("--item", help="the anchor item: recommend items like it")
    recommend.add_argument("--cart", action="append", help="an item in the cart (repeatable)")
    recommend.add_argument("--count", type=int, default=0, help="how many items (default: the recommender's)")
    recommend.add_argument("--exclude", action="append", help="an item id never to return (repeatable)")
    recommend.add_argument("--exclude-purchased", action="store_true", help="leave out items already bought")
    recommend.add_argument("--attribute", action="append", help="an item attribute to show (repeatable)")
    recommend.add_argument("--channel", default="", help="the channel asking (web, email, ...)")
    recommend.add_argument("--explain", action="store_true", help="show which recommenders ran and the filters")
    recommend.add_argument("--test-mode", action="store_true", help="record nothing in the decision log")
    recommend.add_argument("--json", action="store_true", help="print the response as JSON")
    recommend.set_defaults(run=_recommend)

    train = commands.add_parser("train", parents=[client], help="train a learned recommender, showing progress")
    train.add_argument("name", help="the recommender's name")
    train.add_argument("--timeout", type=float, default=3600, help="seconds to wait (default: %(default)s)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)


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
    from tailor_cli.importer import ImportFailed, MappingError

    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
        if asyncio.iscoroutine(result):
            return asyncio.run(result) or 0
        return result or 0
    except grpc.aio.AioRpcError as err:
        print(format_rpc_error(err), file=sys.stderr)
    except TailorError as err:  # raised locally, by `tenant create`
        violations = getattr(err, "violations", [])
        print("\n".join([f"error: {err.code.name}: {err.message}"] + [f"  {f}: {d}" for f, d in violations]),
              file=sys.stderr)
    except (UsageError, OSError, MappingError, ImportFailed) as err:
        print(f"error: {err}", file=sys.stderr)
    except ValueError as err:  # a ConfigError (a configuration file entry), else a bug: tailor_cli.demo is imported
        demo = sys.modules.get("tailor_cli.demo")  # only by the commands that read configurations
        if demo is None or not isinstance(err, demo.ConfigError):
            raise
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
