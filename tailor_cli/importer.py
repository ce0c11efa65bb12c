"""Bulk import of CSV files and JSON-lines events over the public gRPC API (a client: no import of services.*).

`tailor import KIND -f FILE.csv` turns each row into what the gateway takes:

    individuals  an event (custom, named record_import) carrying the row's identities and attributes
    objects      the same event carrying one profile object (type, id and attributes) of the row's individual
    events       one event per row (type, time, identities, item, one line item, properties, attributes)
    items        a catalog item (ProfileGraphService/UpsertItems through the gateway)

A mapping says which column feeds which field. Its keys (the same as flags, `--map KEY=COLUMN`, and as a YAML
file's `columns:`) are

    message_id  time  type  name  item_id  quantity  unit_price  object_id  source  order_id
    identity.<type>         attribute.<name>[:string|number|bool]         property.<name>[:string|number|bool]

and constants `event_type`, `object_type` and `source`. Without a mapping, columns named like keys are used.
A purchase row with a negative quantity (a cancelled line, as in Online Retail's "C" invoices) is imported as a
return of that many units; a return row's quantity counts the units returned whatever its sign, and `order_id`
names the purchase it refers to.
Events carry a message id derived from the row (its number and content) unless a column gives one, so a re-sent
row is stored once. Rows are sent in batches, several at once; a batch the gateway refuses is sent again without
the rows its field violations name, and those rows go to the report (row number, column, field, reason). Row
numbers count data rows from 1 (the header is not a row). A checkpoint file records how many rows are done, so a
re-run resumes after them.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import re
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf import json_format, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gw
from personalization.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from shared import contract, event_rules
from shared.errors import Violations, retry_delay_of, status_details

KINDS = ("individuals", "objects", "events", "items")
SCALAR_KEYS = ("message_id", "time", "type", "name", "item_id", "quantity", "unit_price", "object_id", "source",
               "order_id")
VALUE_TYPES = ("string", "number", "bool")
RECORD_EVENT = "record_import"
CHECKPOINT_VERSION = 1
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_INDEX = re.compile(r"^(events|items)\[(\d+)\]\.?(.*)$")
_EVENT_TYPES = {name.removeprefix("EVENT_TYPE_").lower(): value
                for name, value in common_pb2.EventType.items() if value}


class MappingError(ValueError):
    """A mapping that cannot work with the file (unknown key, missing column, missing required field)."""


@dataclass(frozen=True)
class Mapping:
    """Which column (by index) feeds which field, for one kind of import."""

    kind: str
    scalars: dict[str, int]
    identities: list[tuple[str, int]]
    attributes: list[tuple[str, str, int]]
    properties: list[tuple[str, str, int]]
    event_type: str = ""
    object_type: str = ""
    source: str = "import"
    header: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """A stable digest of the mapping, so a checkpoint is only resumed with the mapping it was made with."""
        text = json.dumps([self.kind, sorted(self.scalars.items()), self.identities, self.attributes,
                           self.properties, self.event_type, self.object_type, self.source, list(self.header)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_map_flags(flags: Iterable[str]) -> dict[str, str]:
    """`KEY=COLUMN` flags -> {key: column}."""
    out: dict[str, str] = {}
    for text in flags:
        key, sep, column = text.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise MappingError(f"--map must look like KEY=COLUMN (for example identity.email=Email), got {text!r}")
        out[key.strip()] = column.strip()
    return out


def load_mapping_file(path: str) -> dict:
    """A YAML mapping file: {columns: {KEY: COLUMN}, event_type, object_type, source}."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("columns", {}), dict):
        raise MappingError(f"{path}: expected a mapping with a `columns:` mapping of KEY: COLUMN")
    unknown = set(data) - {"columns", "event_type", "object_type", "source"}
    if unknown:
        raise MappingError(f"{path}: unknown entries {', '.join(sorted(unknown))}")
    return data


def _typed(key: str) -> tuple[str, str]:
    name, _, kind = key.partition(":")
    kind = kind or "string"
    if kind not in VALUE_TYPES:
        raise MappingError(f"{key}: the type must be one of {', '.join(VALUE_TYPES)}")
    return name, kind


def build_mapping(kind: str, header: list[str], columns: dict[str, str], *, event_type: str = "",
                  object_type: str = "", source: str = "") -> Mapping:
    """Checks a mapping against the kind and the file's header; without columns, header names are the keys."""
    if kind not in KINDS:
        raise MappingError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    if not columns:
        columns = {h: h for h in header if h in SCALAR_KEYS or h.startswith(("identity.", "attribute.", "property."))}
        if not columns:
            raise MappingError("no column is named like a mapping key: give --map KEY=COLUMN or --mapping FILE")
    index = {name: i for i, name in enumerate(header)}
    scalars: dict[str, int] = {}
    identities, attributes, properties = [], [], []
    for key, column in columns.items():
        if column not in index:
            raise MappingError(f"{key}: the file has no column {column!r} (columns: {', '.join(header)})")
        at = index[column]
        if key in SCALAR_KEYS:
            scalars[key] = at
        elif key.startswith("identity."):
            kind_name = key.removeprefix("identity.")
            if not kind_name:
                raise MappingError(f"{key}: name the identity type, as in identity.email")
            identities.append((kind_name, at))
        elif key.startswith("attribute."):
            attributes.append((*_typed(key.removeprefix("attribute.")), at))
        elif key.startswith("property."):
            properties.append((*_typed(key.removeprefix("property.")), at))
        else:
            raise MappingError(f"unknown mapping key {key!r}; keys: {', '.join(SCALAR_KEYS)}, identity.<type>, "
                               "attribute.<name>[:type], property.<name>[:type]")
    if kind == "items":
        if "item_id" not in scalars:
            raise MappingError("items need an item_id column")
    else:
        if not identities:
            raise MappingError(f"{kind} need at least one identity.<type> column")
        if kind == "events" and "time" not in scalars:
            raise MappingError("events need a time column (RFC 3339, a date or epoch seconds)")
        if kind == "events" and "type" not in scalars and not event_type:
            raise MappingError("events need a type column or --event-type")
        if kind == "objects" and "object_id" not in scalars:
            raise MappingError("objects need an object_id column")
        if kind == "objects" and not object_type:
            raise MappingError("objects need --object-type (for example order)")
    if event_type and event_type.lower() not in _EVENT_TYPES:
        raise MappingError(f"--event-type must be one of {', '.join(_EVENT_TYPES)}")
    return Mapping(kind, scalars, identities, attributes, properties, event_type.lower(), object_type,
                   source or "import", tuple(header))


class RowError(Exception):
    """A cell that cannot be converted; names the column."""

    def __init__(self, column: str, reason: str):
        super().__init__(reason)
        self.column, self.reason = column, reason


def _value(text: str, kind: str, column: str):
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            raise RowError(column, f"{text[:40]!r} is not a number") from None
    if kind == "bool":
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise RowError(column, f"{text[:40]!r} is not true or false")
    return text


def _fill(struct, values: dict) -> None:
    """Struct.update for the values a row converts to (strings, numbers, booleans), without its generic walk."""
    fields = struct.fields
    for name, value in values.items():
        if value is True or value is False:
            fields[name].bool_value = value
        elif type(value) is float:
            fields[name].number_value = value
        else:
            fields[name].string_value = value


def parse_seconds(text: str, column: str) -> tuple[int, int]:
    """(seconds, nanos) of RFC 3339 (a naive time is UTC), a date (YYYY-MM-DD) or epoch seconds."""
    text = text.strip()
    try:
        return int(text), 0
    except ValueError:
        pass
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise RowError(column, f"{text[:40]!r} is not an RFC 3339 time, a date or epoch seconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = moment.timestamp()
    if seconds != seconds or abs(seconds) > 1e11:
        raise RowError(column, f"{text[:40]!r} is not an RFC 3339 time, a date or epoch seconds")
    whole = int(seconds // 1)
    return whole, int(round((seconds - whole) * 1e9)) % 1_000_000_000


def parse_time(text: str, column: str) -> timestamp_pb2.Timestamp:
    """parse_seconds as a Timestamp."""
    seconds, nanos = parse_seconds(text, column)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


class RowConverter:
    """Turns CSV rows into Events or Items following a mapping, and maps field paths back to columns.

    The mapping is compiled once into one function per kind: rows are converted at tens of thousands a second,
    so the per-row path looks nothing up by name."""

    def __init__(self, mapping: Mapping):
        self.m = mapping
        self.header = mapping.header
        self.now = timestamp_pb2.Timestamp()
        self.now.GetCurrentTime()
        self.convert = self._compile_item() if mapping.kind == "items" else self._compile_event()

    def _col(self, at: int) -> str:
        return self.header[at] if at < len(self.header) else f"column {at + 1}"

    def _fields(self, spec) -> list[tuple[str, str, int, str]]:
        return [(name, kind, at, self._col(at)) for name, kind, at in spec]

    def message_id(self, number: int, row: list[str]) -> str:
        at = self.m.scalars.get("message_id")
        given = row[at].strip() if at is not None else ""
        if given:
            return given
        digest = hashlib.blake2b("\x1f".join(row).encode(), digest_size=12, key=str(number).encode()).hexdigest()
        return f"import-{self.m.kind[:3]}-{number}-{digest}"

    def _compile_item(self):
        width = len(self.header)
        i_id, i_name = self.m.scalars["item_id"], self.m.scalars.get("name")
        attributes = self._fields(self.m.attributes)
        Item = profile_pb.Item

        def convert(number: int, row: list[str]):
            """The Item of one row; RowError for a cell that does not convert."""
            if len(row) != width:
                raise RowError("", f"has {len(row)} cells, the header has {width}")
            item = Item(item_id=row[i_id].strip(), name=row[i_name].strip() if i_name is not None else "")
            values = {name: _value(row[at], kind, column) for name, kind, at, column in attributes if row[at] != ""}
            if values:
                _fill(item.attributes, values)
            return item

        return convert

    def _compile_event(self):
        m = self.m
        width = len(self.header)
        get = m.scalars.get
        i_mid, i_time, i_type, i_name = get("message_id"), get("time"), get("type"), get("name")
        i_item, i_qty, i_price, i_source, i_object = (get("item_id"), get("quantity"), get("unit_price"),
                                                      get("source"), get("object_id"))
        i_order = get("order_id")
        columns = {key: self._col(at) for key, at in m.scalars.items()}
        identities = m.identities
        attributes, properties = self._fields(m.attributes), self._fields(m.properties)
        kind, source, object_type = m.kind, m.source, m.object_type
        default_type = _EVENT_TYPES.get(m.event_type, 0)
        purchase, refund = common_pb2.EVENT_TYPE_PURCHASE, common_pb2.EVENT_TYPE_RETURN
        now_seconds, now_nanos = self.now.seconds, self.now.nanos
        prefix = f"import-{kind[:3]}-"
        Event, ProfileObject = common_pb2.Event, common_pb2.ProfileObject
        blake2b = hashlib.blake2b

        def convert(number: int, row: list[str]):
            """The Event of one row; RowError for a cell that does not convert."""
            if len(row) != width:
                raise RowError("", f"has {len(row)} cells, the header has {width}")
            message_id = row[i_mid].strip() if i_mid is not None else ""
            if not message_id:
                digest = blake2b("\x1f".join(row).encode(), digest_size=12, key=str(number).encode()).hexdigest()
                message_id = f"{prefix}{number}-{digest}"
            event = Event(message_id=message_id, source=(row[i_source].strip() if i_source is not None else "")
                          or source)
            add_identity = event.identities.add  # built in place: no Identity to copy in
            for t, at in identities:
                value = row[at].strip()
                if value:
                    add_identity(type=t, value=value)
            stamp = event.event_time
            text = row[i_time] if i_time is not None else ""
            if text:
                stamp.seconds, stamp.nanos = parse_seconds(text, columns["time"])
            elif kind != "events":
                stamp.seconds, stamp.nanos = now_seconds, now_nanos
            values = {name: _value(row[at], vkind, column) for name, vkind, at, column in attributes
                      if row[at] != ""}
            if kind == "events":
                type_name = row[i_type].strip().lower() if i_type is not None else ""
                if type_name:
                    event_type = _EVENT_TYPES.get(type_name.removeprefix("event_type_"))
                    if event_type is None:
                        raise RowError(columns["type"], f"{type_name[:40]!r} is not an event type")
                else:
                    event_type = default_type
                event.type = event_type
                if i_name is not None:
                    event.name = row[i_name].strip()
                item_id = row[i_item].strip() if i_item is not None else ""
                if event_type in (purchase, refund) and item_id:
                    quantity = row[i_qty].strip() if i_qty is not None else ""
                    price = row[i_price].strip() if i_price is not None else ""
                    units = _value(quantity, "number", columns["quantity"]) if quantity else 1.0
                    if units < 0 or event_type == refund:
                        event.type, units = refund, abs(units)
                    event.line_items.add(item_id=item_id, quantity=units,
                                         unit_price=_value(price, "number", columns["unit_price"]) if price else 0.0)
                    if event.type == refund and i_order is not None:
                        event.order_id = row[i_order].strip()
                elif item_id:
                    event.item_id = item_id
                if values:
                    _fill(event.attributes, values)
                props = {name: _value(row[at], vkind, column) for name, vkind, at, column in properties
                         if row[at] != ""}
                if props:
                    _fill(event.properties, props)
                return event
            event.type = common_pb2.EVENT_TYPE_CUSTOM
            event.name = RECORD_EVENT
            if kind == "objects":
                obj = ProfileObject(type=object_type, object_id=row[i_object].strip())
                if values:
                    _fill(obj.attributes, values)
                event.profile_objects.append(obj)
            elif values:
                _fill(event.attributes, values)
            return event

        return convert

    def column_of(self, row: list[str], path: str) -> str:
        """The column a field path inside one event or item (identities[1].value, line_items[0].unit_price, ...)
        came from; empty when it is the row as a whole."""
        head = path.split(".")[0]
        base = head.split("[")[0]
        if base == "identities":
            present = [at for _, at in self.m.identities if row[at].strip()]
            index = int(head[len("identities["):-1]) if "[" in head else -1
            return self._col(present[index]) if 0 <= index < len(present) else ""
        if base in ("attributes", "properties") or (base == "profile_objects" and ".attributes." in path):
            name = path.split("attributes.")[-1].split(".")[0] if base != "properties" else \
                path.split("properties.")[-1].split(".")[0]
            spec = self.m.properties if base == "properties" else self.m.attributes
            return next((self._col(at) for n, _, at in spec if n == name), "")
        if base == "profile_objects":
            return self._col(self.m.scalars["object_id"]) if "object_id" in self.m.scalars else ""
        if base == "line_items":
            leaf = path.rsplit(".", 1)[-1]
            key = {"item_id": "item_id", "quantity": "quantity", "unit_price": "unit_price"}.get(leaf, "item_id")
            return self._col(self.m.scalars[key]) if key in self.m.scalars else ""
        key = {"event_time": "time", "type": "type", "name": "name", "item_id": "item_id",
               "message_id": "message_id", "source": "source", "order_id": "order_id"}.get(base, "")
        return self._col(self.m.scalars[key]) if key in self.m.scalars else ""


@dataclass
class Rejected:
    """One reason a row was not imported."""

    row: int
    column: str
    field: str
    reason: str


@dataclass
class Totals:
    """What an import or ingest did."""

    stored: int = 0
    duplicate: int = 0
    rejected_rows: int = 0
    skipped: int = 0  # rows a checkpoint said were done
    acknowledged: int = 0  # stored or duplicate, unknown which: events of a stream cut short by a bad message

    @property
    def done(self) -> int:
        return self.stored + self.duplicate + self.acknowledged + self.rejected_rows


def _indexed(violations: list[tuple[str, str]]) -> tuple[dict[int, list[tuple[str, str]]], list[tuple[str, str]]]:
    """Violations by the index of the event or item they name, and those naming none."""
    by_index: dict[int, list[tuple[str, str]]] = {}
    rest = []
    for path, reason in violations:
        match = _INDEX.match(path)
        if match:
            by_index.setdefault(int(match.group(2)), []).append((match.group(3), reason))
        else:
            rest.append((path, reason))
    return by_index, rest


def _ack_rejections(ack, number: int, column_of: Callable[[str], str] = lambda path: "") -> list[Rejected]:
    """The bad fields of a row the gateway answered ACK_STATUS_REJECTED, their paths without events[i]."""
    out = []
    for violation in ack.violations:
        match = _INDEX.match(violation.field)
        path = match.group(3) if match else ""
        out.append(Rejected(number, column_of(path), path, violation.description))
    return out


def _event_index(ack) -> int:
    """The position in its message of the event a rejection answers (its violations' paths start events[i])."""
    match = _INDEX.match(ack.violations[0].field) if ack.violations else None
    return int(match.group(2)) if match else 0


class ImportFailed(Exception):
    """The gateway refused something no row can be blamed for, or kept failing; the checkpoint keeps what was done."""


async def send_with_rejections(call: Callable, entries: list[tuple[int, list[str], object]],
                               column_of: Callable[[list[str], str], str], *, attempts: int = 8
                               ) -> tuple[Any, list[Rejected]]:
    """Sends entries (row number, cells, message or serialized message) with `call(messages)`; a refusal naming
    rows drops them and sends the rest again, and an acknowledgement ACK_STATUS_REJECTED (skip_invalid) reports its
    row. Returns (the reply of the last call or None when every row was
    refused, rejections)."""
    rejected: list[Rejected] = []
    tries = 0
    while entries:
        try:
            reply = await call([message for _, _, message in entries])
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                by_index, rest = _indexed(status_details(error)[0])
                if rest or not by_index or max(by_index) >= len(entries):
                    raise ImportFailed(f"{code.name}: {error.details()}") from None
                for index, problems in sorted(by_index.items()):
                    number, row, _ = entries[index]
                    rejected += [Rejected(number, column_of(row, path), path, reason) for path, reason in problems]
                entries = [e for i, e in enumerate(entries) if i not in by_index]
                continue
            retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)
            tries += 1
            if not retryable or tries >= attempts:
                raise ImportFailed(f"{code.name}: {error.details()}") from None
            await asyncio.sleep(retry_delay_of(error) or min(0.2 * 2 ** tries, 5.0))
        else:
            # Events sent with skip_invalid: the gateway stored the valid ones and answered each other one with its
            # violations.
            for ack, (number, row, _) in zip(getattr(reply, "acks", ()), entries):
                if ack.status == gw.ACK_STATUS_REJECTED:
                    rejected += _ack_rejections(ack, number, partial(column_of, row))
            return reply, rejected
    return None, rejected


@dataclass
class Checkpoint:
    """How far an import got: the first `rows_done` rows are imported (or rejected and reported)."""

    path: Path
    key: dict
    rows_done: int = 0
    report_bytes: int = 0
    totals: dict = field(default_factory=dict)
    complete: bool = False

    @classmethod
    def open(cls, path: Path, key: dict, restart: bool) -> "Checkpoint":
        if restart or not path.exists():
            return cls(path, key)
        data = json.loads(path.read_text())
        if data.get("key") != key:
            raise MappingError(f"{path} is the checkpoint of another file, kind or mapping: pass --restart to "
                               "import from the first row (rows already stored are acknowledged as duplicates)")
        return cls(path, key, data["rows_done"], data.get("report_bytes", 0), data.get("totals", {}),
                   data.get("complete", False))

    def save(self) -> None:
        temp = self.path.with_name(self.path.name + ".tmp")
        temp.write_text(json.dumps({"version": CHECKPOINT_VERSION, "key": self.key, "rows_done": self.rows_done,
                                    "report_bytes": self.report_bytes, "totals": self.totals,
                                    "complete": self.complete}))
        os.replace(temp, self.path)


class Report:
    """The rejected rows as CSV (row, column, field, reason); on resume, cut back to what the checkpoint covers."""

    def __init__(self, path: Path, keep_bytes: int):
        fresh = keep_bytes == 0 or not path.exists()
        self.file = path.open("w" if fresh else "r+", newline="")
        if fresh:
            csv.writer(self.file).writerow(["row", "column", "field", "reason"])
        else:
            self.file.truncate(keep_bytes)
            self.file.seek(keep_bytes)
        self.writer = csv.writer(self.file)

    def write(self, rejected: list[Rejected]) -> int:
        for r in rejected:
            self.writer.writerow([r.row, r.column, r.field, r.reason])
        self.file.flush()
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


def count_rows(path: Path) -> int:
    """Data rows of a CSV file, estimated by its line count (a quoted newline counts twice) minus the header."""
    with path.open("rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        f.seek(max(0, f.seek(0, os.SEEK_END) - 1))
        ends_with_newline = f.read(1) == b"\n"
    return max(0, lines + (0 if ends_with_newline else 1) - 1)


def progress(total: int, initial: int, description: str, enabled: bool = True):
    """A progress bar on stderr in rows and rows/s (tqdm), advanced as batches are acknowledged."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=" rows", unit_scale=True, desc=description, mininterval=0.2,
                smoothing=0.1, disable=not enabled, dynamic_ncols=True)


@dataclass
class ImportOptions:
    """What `tailor import` was asked to do."""

    kind: str
    file: Path
    columns: dict[str, str]
    event_type: str = ""
    object_type: str = ""
    source: str = ""
    checkpoint: Path | None = None
    report: Path | None = None
    restart: bool = False
    batch_size: int = 1000
    concurrency: int = 4
    show_progress: bool = True
    bulk: bool = True  # events go in the gateway's bulk lane: acknowledged alike, applied behind live events


def _read_rows(path: Path) -> tuple[list[str], Iterator[list[str]], IO[str]]:
    f = path.open(newline="", encoding="utf-8-sig")
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        f.close()
        raise MappingError(f"{path} is empty: a CSV file starts with a header row")
    return [h.strip() for h in header], reader, f


class ContractCheck:
    """The contract's generated checks (shared.contract) and, for events, the rules of their type
    (shared.event_rules), run before sending: a message the gateway would refuse for its content is reported with
    the very violations the gateway would send, and its batch is not refused."""

    def __init__(self, descriptor):
        self.checker = contract.checker(descriptor)
        self.typed = descriptor is common_pb2.Event.DESCRIPTOR
        self.now = time.time()

    def problems(self, message) -> list[tuple[str, str]]:
        """[] when the message passes; else (path inside the message, reason) per bad field."""
        if self.checker.ok(message, self.now, None) and (not self.typed or event_rules.type_ok(message)):
            return []
        v = Violations()
        self.checker.add(message, "m", v, self.now, None)
        if self.typed:
            event_rules.type_violations(message, "m", v)
        return [(path[2:] if path.startswith("m.") else "", reason) for path, reason in v.items]


def _batches(reader, converter: RowConverter, batch_size: int, skip: int, checked: bool = True
             ) -> Iterator[tuple[int, list[tuple[int, list[str], bytes]], list[Rejected]]]:
    """(rows in the batch, entries to send, rows refused while converting or by the contract), from row skip + 1;
    an entry is (row number, cells, the serialized message). checked=False leaves the contract's checks to the
    receiver (events sent with skip_invalid, which the gateway answers one by one)."""
    problems_of = ContractCheck(profile_pb.Item.DESCRIPTOR if converter.m.kind == "items"
                                else common_pb2.Event.DESCRIPTOR).problems if checked else lambda message: []
    number = 0
    for _ in range(skip):
        if next(reader, None) is None:
            return
        number += 1
    entries: list[tuple[int, list[str], bytes]] = []
    local: list[Rejected] = []
    count = 0
    for row in reader:
        number += 1
        count += 1
        try:
            message = converter.convert(number, row)
        except RowError as error:
            local.append(Rejected(number, error.column, "", error.reason))
        else:
            problems = problems_of(message)
            if problems:
                local += [Rejected(number, converter.column_of(row, path), path, reason) for path, reason in problems]
            else:
                entries.append((number, row, message.SerializeToString()))
        if count == batch_size:
            yield count, entries, local
            entries, local, count = [], [], 0
    if count:
        yield count, entries, local


def _raw_method(channel: grpc.aio.Channel, service, method: str, field: str, response_class, rest: bytes = b""):
    """A unary call whose request is a list of messages already serialized, sent as its repeated field `field`,
    followed by `rest` (the request's other fields, serialized).

    Each row's message is serialized once, when it is checked; a request is then the payloads joined, each behind
    the field's tag and length (the wire format of a repeated message field), instead of the messages being copied
    into a request message and serialized again, for every batch and every resend of one."""
    rpc = channel.unary_unary(f"/{service.full_name}/{method}", request_serializer=None,
                              response_deserializer=response_class.FromString)
    number = service.methods_by_name[method].input_type.fields_by_name[field].number
    assert number < 16, "a one-byte tag"
    tag = bytes([number << 3 | 2])

    def request(payloads: list[bytes]) -> bytes:
        parts = []
        for payload in payloads:
            size = len(payload)
            head = bytearray(tag)
            while size > 0x7F:
                head.append(size & 0x7F | 0x80)
                size >>= 7
            head.append(size)
            parts.append(bytes(head))
            parts.append(payload)
        parts.append(rest)
        return b"".join(parts)

    def call(payloads: list[bytes], **kwargs):
        return rpc(request(payloads), **kwargs)

    return call


async def import_csv(channel: grpc.aio.Channel, metadata, options: ImportOptions) -> Totals:
    """Imports one CSV file; resumable through its checkpoint. Returns what was done."""
    path = options.file
    checkpoint_path = options.checkpoint or path.with_name(path.name + ".checkpoint.json")
    report_path = options.report or path.with_name(path.name + ".rejected.csv")
    header, reader, f = _read_rows(path)
    try:
        mapping = build_mapping(options.kind, header, options.columns, event_type=options.event_type,
                                object_type=options.object_type, source=options.source)
        stat = path.stat()
        key = {"file": str(path.resolve()), "kind": mapping.kind, "mapping": mapping.fingerprint()}
        checkpoint = Checkpoint.open(checkpoint_path, key, options.restart)
        totals = Totals(**{k: checkpoint.totals.get(k, 0) for k in ("stored", "duplicate", "rejected_rows")})
        totals.skipped = checkpoint.rows_done
        if checkpoint.complete and stat.st_size == checkpoint.totals.get("size"):
            return totals
        report = Report(report_path, checkpoint.report_bytes)
        converter = RowConverter(mapping)
        if mapping.kind == "items":
            method = _raw_method(channel, profile_pb.DESCRIPTOR.services_by_name["ProfileGraphService"],
                                 "UpsertItems", "items", profile_pb.UpsertItemsResponse)
        else:
            method = _raw_method(channel, gw.DESCRIPTOR.services_by_name["GatewayService"], "IngestEvents", "events",
                                 gw.IngestEventsResponse,
                                 gw.IngestEventsRequest(bulk=options.bulk, skip_invalid=True).SerializeToString())

        async def call(payloads):
            return await method(payloads, metadata=metadata, timeout=120)

        bar = progress(max(count_rows(path), checkpoint.rows_done), checkpoint.rows_done,
                       f"import {mapping.kind}", options.show_progress)
        try:
            await _run_batches(reader, converter, call, options, checkpoint, report, totals, bar)
        finally:
            bar.close()
            report.close()
        checkpoint.complete = True
        checkpoint.totals["size"] = stat.st_size
        checkpoint.save()
        return totals
    finally:
        f.close()


async def _run_batches(reader, converter: RowConverter, call, options: ImportOptions, checkpoint: Checkpoint,
                       report: Report, totals: Totals, bar) -> None:
    """Sends batches, `concurrency` at once; finished batches are committed to the report and the checkpoint in
    file order, so the checkpoint never passes a row whose outcome is not recorded."""
    pending: dict[int, asyncio.Task] = {}
    finished: dict[int, tuple[int, Any, list[Rejected], int]] = {}
    next_commit = 0
    last_save = 0.0
    is_items = converter.m.kind == "items"

    async def send(count, entries, local):
        reply, refused = await send_with_rejections(call, entries, converter.column_of)
        accepted = len(entries) - len({r.row for r in refused})
        return count, reply, sorted(local + refused, key=lambda r: r.row), accepted

    def commit(force: bool = False) -> None:
        nonlocal next_commit, last_save
        while next_commit in finished:
            count, reply, rejected, sent_ok = finished.pop(next_commit)
            if is_items:
                totals.stored += sent_ok
            elif reply is not None:
                totals.stored += sum(1 for a in reply.acks if a.status == gw.ACK_STATUS_STORED)
                totals.duplicate += sum(1 for a in reply.acks if a.status == gw.ACK_STATUS_DUPLICATE)
            totals.rejected_rows += len({r.row for r in rejected})
            checkpoint.report_bytes = report.write(rejected)
            checkpoint.rows_done += count
            next_commit += 1
        checkpoint.totals.update(stored=totals.stored, duplicate=totals.duplicate,
                                 rejected_rows=totals.rejected_rows)
        now = time.monotonic()
        if force or now - last_save > 0.5:
            checkpoint.save()
            last_save = now

    async def collect(first_done: bool) -> None:
        done, _ = await asyncio.wait(pending.values(), return_when=asyncio.FIRST_COMPLETED if first_done
                                     else asyncio.ALL_COMPLETED)
        for index in [i for i, t in pending.items() if t in done]:
            count, reply, rejected, sent_ok = pending.pop(index).result()
            finished[index] = (count, reply, rejected, sent_ok)
            bar.update(count)
        commit()

    try:
        # Events go with skip_invalid, so the gateway's own checks report their rows: they are not checked here too.
        for index, (count, entries, local) in enumerate(_batches(reader, converter, options.batch_size,
                                                                checkpoint.rows_done, checked=is_items)):
            pending[index] = asyncio.create_task(send(count, entries, local))
            await asyncio.sleep(0)  # the call goes out now, while the next batch is converted
            while len(pending) >= options.concurrency:
                await collect(True)
        while pending:
            await collect(True)
    finally:
        for task in pending.values():
            task.cancel()
        if pending:
            await asyncio.gather(*pending.values(), return_exceptions=True)
        commit(force=True)


def read_jsonl(path: Path, batch_size: int) -> Iterator[tuple[list[tuple[int, list[str], common_pb2.Event]],
                                                             list[Rejected]]]:
    """Batches of (line number, [line], Event) from a JSON-lines file, with the lines that are not JSON Events.
    Events are not checked against the contract here: they go with skip_invalid, and the gateway names each bad
    field of an event as its own checks find it."""
    entries, local = [], []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entries.append((number, [line], json_format.Parse(line, common_pb2.Event())))
            except json_format.ParseError as error:
                local.append(Rejected(number, "", "", f"not a JSON Event: {str(error)[:200]}"))
            if len(entries) + len(local) >= batch_size:
                yield entries, local
                entries, local = [], []
    if entries or local:
        yield entries, local


async def ingest_jsonl(channel: grpc.aio.Channel, metadata, path: Path, *, batch_size: int = 500,
                       show_progress: bool = True, on_rejected: Callable[[list[Rejected]], None] = lambda _: None,
                       bulk: bool = False) -> Totals:
    """Streams a JSON-lines file of Events over one StreamIngestEvents in batches (in the bulk lane when bulk), each
    with skip_invalid: the gateway stores the valid events and answers each bad one, reported here by line. A
    refusal of the stream (no line to blame) stops the ingest: the messages before it stay stored."""
    stub = gw_grpc.GatewayServiceStub(channel)
    totals = Totals()
    bar = progress(sum(1 for line in path.open(encoding="utf-8") if line.strip()), 0, "ingest", show_progress)
    lines: list[array] = []  # the line number of each event sent, per stream message

    async def messages():
        # The bar advances as the transport takes messages (flow control paces it to the gateway, which stores
        # each message when it arrives).
        for entries, local in read_jsonl(path, batch_size):
            if local:
                totals.rejected_rows += len({r.row for r in local})
                on_rejected(local)
                bar.update(len({r.row for r in local}))
            if entries:
                lines.append(array("q", (number for number, _, _ in entries)))
                yield gw.StreamIngestEventsRequest(events=[e for _, _, e in entries], bulk=bulk, skip_invalid=True)
                bar.update(len(entries))

    try:
        try:
            reply = await stub.StreamIngestEvents(messages(), metadata=metadata, timeout=3600)
        except grpc.aio.AioRpcError as error:
            raise ImportFailed(f"{error.code().name}: {error.details()}") from None
        totals.stored += reply.stored_count
        totals.duplicate += reply.duplicate_count
        rejected = [r for ack in reply.acks if ack.status == gw.ACK_STATUS_REJECTED
                    for r in _ack_rejections(ack, lines[ack.message_index][_event_index(ack)])]
        if rejected:
            totals.rejected_rows += len({r.row for r in rejected})
            on_rejected(rejected)
        return totals
    finally:
        bar.close()
