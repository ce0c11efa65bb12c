"""The demo tenant: configuration from YAML and the Online Retail invoices, loaded through the public API.

Configuration file shape (what `tailor apply -f FILE.yaml` accepts; tailor_cli/demo_config.yaml is an example).
Every entry is an idempotent upsert by name; enum values may be written short (SUM) or in full (AGGREGATE_SUM)::

    insights:                      # -> ProfileGraphService/UpsertInsight
      - name: spend_30d
        description: ...
        aggregate: SUM             # COUNT | SUM
        field: revenue             # for SUM: revenue, quantity or properties.<name>
        event_type: PURCHASE       # PAGE_VIEW, PRODUCT_VIEW, ADD_TO_CART, PURCHASE, ...; omit for every type
        window: 30d                # 2592000s, 720h, 30d, ...; omit for all time
    segments:                      # -> ProfileGraphService/UpsertSegment
      - {name: big_spenders, rule: "insights.spend_30d >= 1000.0"}
    points:                        # -> DecisionService/UpsertPoint
      - name: home_banner
        type: MANUAL_CONTENT       # MANUAL_CONTENT | RECOMMENDATIONS
        template:
          fields: [{name: headline, type: STRING, required: true}]   # STRING, NUMBER, BOOL, STRING_LIST
          item_attributes: [name, price]                             # recommendation points
        bandit: {reward: CLICK, min_offer_share: 0.05, holdout_share: 0.1}  # optional: Thompson sampling
        decisions:                 # -> DecisionService/UpsertDecision, point_name set from the point
          - name: vip_offer
            priority: 100
            rule: "'big_spenders' in profile.segments"
            content: {headline: Hello}                               # or
            recommendations: {recommender: top_sellers, count: 12}
          - {name: welcome, fallback: true, content: {headline: Welcome}}

A decision is matched to an existing one by (point, name), so re-applying a file replaces rather than duplicates.

Every other configuration has a section too (see SECTIONS), each entry written as the proto message of its
upsert in YAML form, enum values short or full, durations as 30d/720h/2592000s::

    identity_types: [{name: loyalty_id, unique: true, normalization: TRIM}]
    affinity: {dimensions: [category], weights: [{event_type: PURCHASE, weight: 5}], half_life: 30d}
    reconciliation: [{object: individual,
                      default_reconciliation: {policy: SOURCE_PRIORITY, source_priority: [crm, web]}}]
    profile_schema: {attributes: [{name: tier, type: STRING}], segments: [big_spenders]}
    recommenders: [{name: als, strategy: learned, parameters: {algorithm: als, objective: MAXIMIZE_PURCHASES}}]
    experiments: [{name: hero_test, point_name: home_banner, cohorts: [...], primary_metric: CONVERSION,
                   layer: {name: promo, start_bps: 0, end_bps: 5000}}]
    holdout: {fraction_bps: 500}
    data_model: {datasets: [crm], attributes: [{name: first_name, type: STRING}]}
    destinations: [{name: crm_export, file: {directory: crm, format: JSONL}}]
    activations: [{name: vip_flags, destination: crm_export, segment_membership: {segment: big_spenders}}]
    batch_schedules: [{name: nightly, segment: big_spenders, point_names: [home_recs], cron: "0 3 * * *"}]
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as dec
from personalization.decision.v1 import decision_service_pb2_grpc as dec_grpc
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from personalization.identity.v1 import identity_service_pb2 as idn
from personalization.identity.v1 import identity_service_pb2_grpc as id_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as pg
from personalization.profile_graph.v1 import profile_graph_service_pb2_grpc as pg_grpc
from personalization.recommender.v1 import recommender_service_pb2 as rec
from personalization.recommender.v1 import recommender_service_pb2_grpc as rec_grpc

DATA_PATH = Path(__file__).resolve().parents[2] / "shared/external-data/online-retail/online_retail_2010-12.csv.gz"
DEMO_CONFIG_PATH = Path(__file__).resolve().parent / "demo_config.yaml"
ITEM_BATCH = 1_000
EVENT_BATCH = 500
CSV_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")

Out = Callable[[str], None]


# ---------------------------------------------------------------- configuration (YAML -> requests)

class ConfigError(ValueError):
    """A configuration file entry that cannot become a request; `path` names it (points[0].decisions[1].rule)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass
class Config:
    """The requests a configuration file stands for, in the order they are applied."""

    insights: list[pg.UpsertInsightRequest] = field(default_factory=list)
    segments: list[pg.UpsertSegmentRequest] = field(default_factory=list)
    points: list[dec.UpsertPointRequest] = field(default_factory=list)
    decisions: list[dec.UpsertDecisionRequest] = field(default_factory=list)
    # (section, entry name, stub factory, method name, request) of every other section, in SECTIONS order.
    others: list[tuple[str, str, Callable, str, Any]] = field(default_factory=list)


# Sections beyond insights/segments/points: YAML key -> (stub, method, request class, request field, many).
# Each entry is the message of that field in YAML form; every call is an idempotent upsert by name.
SECTIONS = {
    "identity_types": (id_grpc.IdentityServiceStub, "UpsertIdentityType", idn.UpsertIdentityTypeRequest,
                       "identity_type", True),
    "affinity": (pg_grpc.ProfileGraphServiceStub, "SetAffinityConfig", pg.SetAffinityConfigRequest, "config", False),
    "reconciliation": (pg_grpc.ProfileGraphServiceStub, "SetReconciliationRule", pg.SetReconciliationRuleRequest,
                       "rule", True),
    "profile_schema": (dec_grpc.DecisionServiceStub, "DeclareProfileSchema", dec.DeclareProfileSchemaRequest,
                       "schema", False),
    "recommenders": (rec_grpc.RecommenderServiceStub, "PutRecommender", rec.PutRecommenderRequest, "config", True),
    "experiments": (dec_grpc.DecisionServiceStub, "UpsertExperiment", dec.UpsertExperimentRequest, "experiment",
                    True),
    "holdout": (dec_grpc.DecisionServiceStub, "SetHoldout", dec.SetHoldoutRequest, "holdout", False),
    "data_model": (gw_grpc.GatewayServiceStub, "UpsertDataModel", gw.UpsertDataModelRequest, "data_model", False),
    "destinations": (gw_grpc.GatewayServiceStub, "UpsertDestination", gw.UpsertDestinationRequest, "destination",
                     True),
    "activations": (gw_grpc.GatewayServiceStub, "UpsertActivation", gw.UpsertActivationRequest, "activation", True),
    "batch_schedules": (gw_grpc.GatewayServiceStub, "UpsertBatchSchedule", gw.UpsertBatchScheduleRequest,
                        "schedule", True),
}


_WINDOW = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _window(value: Any, path: str) -> str:
    match = _WINDOW.match(str(value).strip())
    if not match:
        raise ConfigError(path, f"must be a duration such as 2592000s, 720h or 30d, got {value!r}")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return f"{seconds:g}s" if seconds != int(seconds) else f"{int(seconds)}s"


def _enum_prefix(enum) -> str:
    """The prefix every value of a proto enum shares (AGGREGATE_ for Aggregate)."""
    names = [v.name for v in enum.values]
    return names[0].removesuffix("UNSPECIFIED") if names[0].endswith("UNSPECIFIED") else ""


def _normalize(value: Any, descriptor, path: str) -> Any:
    """Lets YAML write enum values short (SUM for AGGREGATE_SUM) and durations as 30d/720h, for any message."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for member in descriptor.fields:
        if member.name not in out:
            continue
        item = out[member.name]
        fpath = f"{path}.{member.name}"
        if member.enum_type is not None:
            prefix = _enum_prefix(member.enum_type)

            def fix(v, prefix=prefix):
                return prefix + v.upper() if isinstance(v, str) and not v.upper().startswith(prefix) else (
                    v.upper() if isinstance(v, str) else v)
            out[member.name] = [fix(v) for v in item] if isinstance(item, list) else fix(item)
        elif member.message_type is not None and member.message_type.full_name == "google.protobuf.Duration":
            out[member.name] = _window(item, fpath)
        elif member.message_type is not None and member.message_type.GetOptions().map_entry:
            value_field = member.message_type.fields_by_name["value"]
            if value_field.message_type is not None and isinstance(item, dict):
                out[member.name] = {k: _normalize(v, value_field.message_type, f"{fpath}.{k}") for k, v in item.items()}
        elif member.message_type is not None and member.message_type.full_name.startswith("personalization."):
            if isinstance(item, list):
                out[member.name] = [_normalize(v, member.message_type, f"{fpath}[{i}]") for i, v in enumerate(item)]
            else:
                out[member.name] = _normalize(item, member.message_type, fpath)
    return out


def _entries(data: dict, key: str, name_field: str = "name") -> list[dict]:
    entries = data.get(key) or []
    if not isinstance(entries, list):
        raise ConfigError(key, "must be a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}[{i}]", "must be a mapping")
        if name_field and not entry.get(name_field):
            raise ConfigError(f"{key}[{i}].{name_field}", "is required")
    return entries


def _parse(message_dict: dict, message, path: str):
    try:
        return json_format.ParseDict(_normalize(message_dict, message.DESCRIPTOR, path), message)
    except json_format.ParseError as err:
        raise ConfigError(path, str(err)) from None


def parse_config(data: dict | None) -> Config:
    """Turns a parsed configuration file into the upsert requests it stands for (raises ConfigError)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError("", "the file must be a mapping with insights, segments and points")
    known = ("insights", "segments", "points", *SECTIONS)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(unknown[0], f"unknown section; expected one of {', '.join(known)}")
    config = Config()
    for i, entry in enumerate(_entries(data, "insights")):
        config.insights.append(pg.UpsertInsightRequest(insight=_parse(entry, pg.Insight(), f"insights[{i}]")))
    for i, entry in enumerate(_entries(data, "segments")):
        config.segments.append(pg.UpsertSegmentRequest(segment=_parse(entry, pg.Segment(), f"segments[{i}]")))
    for i, entry in enumerate(_entries(data, "points")):
        path = f"points[{i}]"
        entry = dict(entry)
        decisions = entry.pop("decisions", None) or []
        if not isinstance(decisions, list):
            raise ConfigError(f"{path}.decisions", "must be a list")
        config.points.append(dec.UpsertPointRequest(point=_parse(entry, dec.Point(), path)))
        for j, decision in enumerate(decisions):
            dpath = f"{path}.decisions[{j}]"
            if not isinstance(decision, dict) or not decision.get("name"):
                raise ConfigError(f"{dpath}.name", "is required")
            decision = dict(decision)
            if decision.setdefault("point_name", entry["name"]) != entry["name"]:
                raise ConfigError(f"{dpath}.point_name", f"must be {entry['name']!r} (the point it is listed under)")
            config.decisions.append(dec.UpsertDecisionRequest(decision=_parse(decision, dec.Decision(), dpath)))
    for section, (stub, method, request_class, field_name, many) in SECTIONS.items():
        if section not in data:
            continue
        message_type = request_class.DESCRIPTOR.fields_by_name[field_name].message_type
        key = next((k for k in ("name", "object") if k in message_type.fields_by_name), "")
        if many:
            entries = [(f"{section}[{i}]", e) for i, e in enumerate(_entries(data, section, key))]
        else:
            if not isinstance(data[section], dict):
                raise ConfigError(section, "must be a mapping")
            entries = [(section, data[section])]
        for path, entry in entries:
            request = request_class(**{field_name: _parse(entry, message_type._concrete_class(), path)})
            config.others.append((section, str(entry.get(key, "")) if key else "", stub, method, request))
    return config


def load_config_file(path: str | Path) -> Config:
    """Reads and parses a YAML configuration file (raises ConfigError, also for YAML syntax errors)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path} is not valid YAML: {err}") from None
    return parse_config(data)


def _auth(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


async def _decision_ids(stub: dec_grpc.DecisionServiceStub, point: str, md) -> dict[str, str]:
    ids: dict[str, str] = {}
    token = ""
    while True:
        page = await stub.ListDecisions(dec.ListDecisionsRequest(point_name=point, page_token=token), metadata=md)
        ids.update({d.name: d.decision_id for d in page.decisions})
        token = page.next_page_token
        if not token:
            return ids


async def apply_config(gateway_address: str, api_key: str, config: Config | str | Path = DEMO_CONFIG_PATH,
                       *, out: Out = print) -> Config:
    """Applies insights, segments, points then decisions through the gateway's admin RPCs; returns what was sent."""
    if not isinstance(config, Config):
        config = load_config_file(config)
    md = _auth(api_key)
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        profiles = pg_grpc.ProfileGraphServiceStub(channel)
        decisions = dec_grpc.DecisionServiceStub(channel)
        for request in config.insights:
            await profiles.UpsertInsight(request, metadata=md, timeout=60)
            out(f"insight {request.insight.name} applied")
        for request in config.segments:
            reply = await profiles.UpsertSegment(request, metadata=md, timeout=60)
            out(f"segment {request.segment.name} applied ({reply.segment.member_count} members)")
        for request in config.points:
            await decisions.UpsertPoint(request, metadata=md, timeout=30)
            out(f"point {request.point.name} applied")
        known: dict[str, dict[str, str]] = {}
        for request in config.decisions:
            d = request.decision
            if not d.decision_id:
                if d.point_name not in known:
                    known[d.point_name] = await _decision_ids(decisions, d.point_name, md)
                d.decision_id = known[d.point_name].get(d.name, "")
            reply = await decisions.UpsertDecision(request, metadata=md, timeout=30)
            known.setdefault(d.point_name, {})[d.name] = reply.decision.decision_id
            out(f"decision {d.point_name}/{d.name} applied")
        for section, name, stub, method, request in config.others:
            await getattr(stub(channel), method)(request, metadata=md, timeout=60)
            out(f"{section} {name} applied".replace("  ", " "))
    return config


# ---------------------------------------------------------------- the Online Retail data (CSV -> items, events)

def read_rows(source: str | Path | Iterable[str] = DATA_PATH) -> list[dict[str, str]]:
    """The CSV rows as dicts, from a .csv.gz path or from lines of text (header first)."""
    if isinstance(source, (str, Path)):
        with gzip.open(source, "rt", encoding="utf-8", newline="") as f:
            return _rows(f)
    return _rows(io.StringIO("".join(line if line.endswith("\n") else line + "\n" for line in source)))


def _rows(f) -> list[dict[str, str]]:
    reader = csv.DictReader(f)
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"the CSV lacks the columns {', '.join(missing)}")
    return list(reader)


def _invoice_time(row: dict[str, str]) -> datetime:
    return datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)


def time_shift(rows: list[dict[str, str]], now: datetime) -> timedelta:
    """The one constant added to every invoice time so that the most recent invoice happens at `now`."""
    return now - max(_invoice_time(r) for r in rows)


def items_from_rows(rows: list[dict[str, str]]) -> list[pg.Item]:
    """One item per StockCode: the most frequent description as name, the most recent positive unit price."""
    names: dict[str, Counter] = defaultdict(Counter)
    prices: dict[str, float] = {}
    for row in rows:
        code = row["StockCode"]
        if row["Description"].strip():
            names[code][row["Description"].strip()] += 1
        price = float(row["UnitPrice"] or 0)
        if price > 0 or code not in prices:
            prices[code] = price
    items = []
    for code in prices:
        name = names[code].most_common(1)[0][0] if names[code] else code
        attributes = struct_pb2.Struct()
        attributes.update({"price": prices[code], "description": name})
        items.append(pg.Item(item_id=code, name=name, attributes=attributes))
    return items


def events_from_rows(rows: list[dict[str, str]], now: datetime) -> list[common_pb2.Event]:
    """One PURCHASE per invoice, oldest first, times shifted so the last invoice is at `now`.

    A cancellation invoice (InvoiceNo starting with "C") is a RETURN of the units it lists (its negative quantities
    made positive), so it counts as refunded revenue and not as one more purchase. The data does not say which
    invoice a cancellation cancels, so order_id stays empty. Other negative lines (stock adjustments without a
    customer) stay purchases with negative quantities.
    """
    shift = time_shift(rows, now)
    invoices: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        invoices[row["InvoiceNo"]].append(row)
    ordered = sorted(invoices.items(), key=lambda kv: (min(_invoice_time(r) for r in kv[1]), kv[0]))
    events = []
    for invoice_no, lines in ordered:
        first = lines[0]
        customer = first["CustomerID"].strip()
        if customer:
            identity = common_pb2.Identity(type="customer_id", value=customer)
        else:
            identity = common_pb2.Identity(type="device_id", value=f"anon-{invoice_no}")
        event_time = timestamp_pb2.Timestamp()
        event_time.FromDatetime(min(_invoice_time(r) for r in lines) + shift)
        attributes = struct_pb2.Struct()
        attributes.update({"country": first["Country"]})
        properties = struct_pb2.Struct()
        properties.update({"invoice_no": invoice_no})
        cancelled = invoice_no.startswith("C")
        events.append(common_pb2.Event(
            message_id=f"invoice-{invoice_no}",
            type=common_pb2.EVENT_TYPE_RETURN if cancelled else common_pb2.EVENT_TYPE_PURCHASE,
            event_time=event_time,
            identities=[identity],
            attributes=attributes,
            properties=properties,
            line_items=[
                common_pb2.LineItem(item_id=r["StockCode"],
                                    quantity=abs(float(r["Quantity"])) if cancelled else float(r["Quantity"]),
                                    unit_price=float(r["UnitPrice"] or 0))
                for r in lines
            ],
        ))
    return events


def top_customer(rows: list[dict[str, str]]) -> str:
    """The known customer with the highest net spend: a member of big_spenders once the demo is processed."""
    spend: dict[str, float] = {}
    for row in rows:
        if row["CustomerID"].strip():
            customer = row["CustomerID"].strip()
            spend[customer] = spend.get(customer, 0.0) + float(row["Quantity"]) * float(row["UnitPrice"] or 0)
    return max(spend, key=lambda customer: spend[customer])


# ---------------------------------------------------------------- loading

@dataclass
class DemoSummary:
    """What load_demo did."""

    items_upserted: int = 0
    events_stored: int = 0
    events_duplicate: int = 0
    customer_id: str = ""
    seconds: float = 0.0


async def load_demo(gateway_address: str, api_key: str, *, data_path: str | Path = DATA_PATH,
                    config: Config | str | Path = DEMO_CONFIG_PATH, now: datetime | None = None,
                    out: Out = print) -> DemoSummary:
    """Applies the demo configuration, then upserts the catalog and ingests every invoice through the gateway.

    Safe to re-run: configuration is upserted by name, items are replaced, and re-sent invoices are
    acknowledged as duplicates.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    await apply_config(gateway_address, api_key, config, out=out)
    rows = read_rows(data_path)
    items = items_from_rows(rows)
    events = events_from_rows(rows, now or datetime.now(timezone.utc))
    summary = DemoSummary(customer_id=top_customer(rows))
    md = _auth(api_key)
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        profiles = pg_grpc.ProfileGraphServiceStub(channel)
        gateway = gw_grpc.GatewayServiceStub(channel)
        for start in range(0, len(items), ITEM_BATCH):
            reply = await profiles.UpsertItems(pg.UpsertItemsRequest(items=items[start:start + ITEM_BATCH]),
                                               metadata=md, timeout=60)
            summary.items_upserted += reply.upserted_count
        for start in range(0, len(events), EVENT_BATCH):
            reply = await gateway.IngestEvents(gw.IngestEventsRequest(events=events[start:start + EVENT_BATCH]),
                                               metadata=md, timeout=60)
            for ack in reply.acks:
                if ack.status == gw.ACK_STATUS_DUPLICATE:
                    summary.events_duplicate += 1
                else:
                    summary.events_stored += 1
    summary.seconds = loop.time() - started
    out(f"demo: {summary.items_upserted} items upserted; {len(events)} invoices from {len(rows)} lines: "
        f"{summary.events_stored} events stored, {summary.events_duplicate} duplicates "
        f"({summary.seconds:.1f} s)")
    return summary


async def wait_until_processed(gateway_address: str, api_key: str, customer_id: str, *, timeout: float = 20.0,
                               segment: str = "big_spenders") -> gw.GetProfileResponse | None:
    """Polls the customer's profile until it is in `segment` (the pipeline runs after ingest); None on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    request = gw.GetProfileRequest(individual_id=common_pb2.Identity(type="customer_id", value=customer_id),
                                   event_limit=1)
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        gateway = gw_grpc.GatewayServiceStub(channel)
        while loop.time() < deadline:
            try:
                profile = await gateway.GetProfile(request, metadata=_auth(api_key), timeout=5)
                if segment in profile.segments:
                    return profile
            except grpc.aio.AioRpcError as err:
                if err.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            await asyncio.sleep(0.25)
    return None


# ---------------------------------------------------------------- quickstart (README.md and the start-up banner)

# The README's quickstart blocks are exactly these commands (a test checks it, and another runs them against a
# launched suite); the banner prints them with this machine's tool paths and gateway address substituted.
README_GATEWAY = "127.0.0.1:50051"
README_GRPCURL = ".venv/bin/grpcurl"
README_TAILOR = ".venv/bin/tailor"
QUICKSTART_EMAIL = "ada@example.com"
QUICKSTART_DEVICE = "dev-4f1c"
_GW = f"{README_GATEWAY} personalization.gateway.v1.GatewayService"
_AUTH = '-plaintext -H "authorization: Bearer $KEY"'


@dataclass(frozen=True)
class QuickstartStep:
    """One step of the quickstart: a title and its bash commands (a grpcurl call, then its tailor equivalent)."""

    title: str
    commands: str


def _ingest_step(title: str, event: str) -> QuickstartStep:
    return QuickstartStep(title, "\n".join([
        f"{README_GRPCURL} {_AUTH} -d @ {_GW}/IngestEvents <<EOF",
        f'{{"events": [{event}]}}',
        "EOF",
        f"{README_TAILOR} ingest -f - <<EOF",
        event,
        "EOF",
    ]))


_WHO = f'"individual_id": {{"type": "email", "value": "{QUICKSTART_EMAIL}"}}'
QUICKSTART_SETUP = QuickstartStep("Set up the shell", "\n".join([
    "KEY=$(cat .tailor/demo_key)          # the demo tenant's API key (make run prints it too)",
    "NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)   # the events below happen now",
]))
QUICKSTART = [
    _ingest_step("An anonymous visitor views a product", (
        '{"message_id": "qs-1", "type": "EVENT_TYPE_PRODUCT_VIEW", "event_time": "$NOW", "source": "web", '
        f'"identities": [{{"type": "device_id", "value": "{QUICKSTART_DEVICE}"}}], "item_id": "22423"}}')),
    _ingest_step("The visitor logs in, which links the device to an email", (
        '{"message_id": "qs-2", "type": "EVENT_TYPE_LOGIN", "event_time": "$NOW", "source": "web", '
        f'"identities": [{{"type": "device_id", "value": "{QUICKSTART_DEVICE}"}}, '
        f'{{"type": "email", "value": "{QUICKSTART_EMAIL}"}}], "attributes": {{"first_name": "Ada"}}}}')),
    _ingest_step("They buy", (
        '{"message_id": "qs-3", "type": "EVENT_TYPE_PURCHASE", "event_time": "$NOW", "source": "web", '
        f'"identities": [{{"type": "email", "value": "{QUICKSTART_EMAIL}"}}], "line_items": ['
        '{"item_id": "22423", "quantity": 80, "unit_price": 12.75}, '
        '{"item_id": "85123A", "quantity": 6, "unit_price": 2.55}]}')),
    QuickstartStep("Read the unified profile", "\n".join([
        f"{README_GRPCURL} {_AUTH} -d '{{{_WHO}, \"event_limit\": 3}}' {_GW}/GetProfile",
        f"{README_TAILOR} profile --identity email:{QUICKSTART_EMAIL} --events 3",
    ])),
    QuickstartStep("Get decisions", "\n".join([
        f"{README_GRPCURL} {_AUTH} -d '{{{_WHO}, \"personalization_points\": [{{\"name\": \"home_banner\"}}, "
        f"{{\"name\": \"home_recs\"}}]}}' {_GW}/GetDecisions",
        f"{README_TAILOR} decide --point home_banner --point home_recs --identity email:{QUICKSTART_EMAIL} --explain",
    ])),
    QuickstartStep("Get recommendations", "\n".join([
        f"{README_GRPCURL} {_AUTH} -d '{{{_WHO}, \"count\": 5, \"exclude_purchased\": true, "
        f"\"item_attributes\": [\"name\"]}}' {_GW}/GetRecommendations",
        f"{README_TAILOR} recommend --identity email:{QUICKSTART_EMAIL} --count 5 --exclude-purchased "
        "--attribute name",
        f"{README_TAILOR} recommend --item 22423 --count 5 --attribute name    # items like this one",
    ])),
]


def quickstart_lines(grpcurl: str = README_GRPCURL, tailor: str = README_TAILOR,
                     gateway: str = README_GATEWAY) -> list[str]:
    """The quickstart as the banner prints it: numbered comments and commands, with these tools and gateway."""
    lines: list[str] = []
    for number, step in enumerate(QUICKSTART, start=1):
        lines.append(f"# {number}. {step.title}")
        text = step.commands.replace(README_GRPCURL, grpcurl).replace(README_TAILOR, tailor)
        lines += text.replace(README_GATEWAY, gateway).splitlines()
    return lines
