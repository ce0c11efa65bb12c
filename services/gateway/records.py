"""Record sync (SendRecordData): CRM records resolved to profiles now, then stored as events for the pipeline."""

from __future__ import annotations

import hashlib
import time

from google.protobuf import json_format, timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.identity.v1 import identity_service_pb2 as identity_pb
from services.gateway.ingest import NAME, IdentityTypes, checked, validate_event
from services.gateway.ports import IdentityPort
from services.gateway.postgres import GatewayStore
from services.gateway.routing import route_of
from shared import contract
from shared.errors import QUOTE_CHARS, Violations, shorten

MAX_RECORDS = 25
MAX_RECORDS_INCREASED = 100
MAX_RECORD_ID = 100
DEFAULT_INTERACTION = "record_sync"
_TYPE_CHECKS = {
    pb.ATTRIBUTE_TYPE_STRING: lambda v: isinstance(v, str),
    pb.ATTRIBUTE_TYPE_NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    pb.ATTRIBUTE_TYPE_BOOL: lambda v: isinstance(v, bool),
    pb.ATTRIBUTE_TYPE_STRING_LIST: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


def validate_data_model(model: pb.DataModel) -> None:
    v = Violations()
    for i, dataset in enumerate(model.datasets):
        if not NAME.match(dataset):
            v.add(f"data_model.datasets[{i}]", "must match ^[a-z][a-z0-9_]{0,63}$")
    _check_declarations(model.attributes, "data_model.attributes", v)
    seen = set()
    for i, obj in enumerate(model.object_types):
        if not NAME.match(obj.type) or obj.type in seen:
            v.add(f"data_model.object_types[{i}].type", "must be a unique lowercase identifier")
        seen.add(obj.type)
        _check_declarations(obj.attributes, f"data_model.object_types[{i}].attributes", v)
    v.raise_if_any()


def _check_declarations(declarations, path: str, v: Violations) -> None:
    seen = set()
    for i, attribute in enumerate(declarations):
        if not NAME.match(attribute.name) or attribute.name in seen:
            v.add(f"{path}[{i}].name", "must be a unique lowercase identifier")
        if attribute.type not in _TYPE_CHECKS:
            v.add(f"{path}[{i}].type", "must be a known attribute type")
        seen.add(attribute.name)


def _check_values(values: dict, declared, path: str, v: Violations) -> None:
    types = {a.name: a.type for a in declared}
    for name, value in values.items():
        if name not in types:
            v.add(f"{path}.{shorten(name, QUOTE_CHARS)}", "is not declared in the data model")
        elif value is not None and not _TYPE_CHECKS[types[name]](value):
            v.add(f"{path}.{name}", f"must be {pb.AttributeType.Name(types[name]).removeprefix('ATTRIBUTE_TYPE_')}")


def record_event(record: pb.SyncRecord, now: timestamp_pb2.Timestamp) -> common_pb2.Event:
    """The pipeline event a record becomes; its message id derives from record_id, or from its content."""
    event = common_pb2.Event(
        type=common_pb2.EVENT_TYPE_CUSTOM, name=record.interaction_name or DEFAULT_INTERACTION, event_time=now,
        identities=record.identities, attributes=record.attributes, profile_objects=record.profile_objects,
        source=record.dataset)
    key = record.record_id or hashlib.sha256(record.SerializeToString(deterministic=True)).hexdigest()
    event.message_id = f"record-{key}"
    return event


class RecordSync:
    """Validates records (structure always; the data model unless increased_batch_size), resolves, stores."""

    def __init__(self, store: GatewayStore, identity_stub: IdentityPort,
                 identity_types: IdentityTypes | None = None):
        self.store = store
        self.identity = identity_stub
        self.identity_types = identity_types

    async def send(self, tenant_id: str, request: pb.SendRecordDataRequest) -> pb.SendRecordDataResponse:
        records = request.records
        limit = MAX_RECORDS_INCREASED if request.increased_batch_size else MAX_RECORDS
        v = Violations()
        if not records:
            v.add("records", "at least one record is required")
        elif len(records) > limit:
            v.add("records", f"at most {limit} records per request"
                  + ("" if request.increased_batch_size else " (100 with increased_batch_size)"))
        v.raise_if_any()
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        events = [record_event(r, now) for r in records]
        model = None if request.increased_batch_size else await self.store.data_model(tenant_id)
        await checked(self.identity_types, tenant_id, lambda known: self._validate(records, events, model, known))
        resolved = await self.identity.ResolveIdentities(identity_pb.ResolveIdentitiesRequest(
            subjects=[identity_pb.Subject(identities=r.identities) for r in records]))
        stored = await self.store.store_events(
            tenant_id, [e.message_id for e in events], [e.SerializeToString() for e in events],
            [route_of(e) for e in events])
        return pb.SendRecordDataResponse(results=[
            pb.RecordResult(index=i, unified_individual_id=res.unified_individual_id, created=res.created,
                            message_id=e.message_id,
                            status=pb.ACK_STATUS_STORED if e.message_id in stored else pb.ACK_STATUS_DUPLICATE)
            for i, (res, e) in enumerate(zip(resolved.resolutions, events))])

    def _validate(self, records, events: list[common_pb2.Event], model: pb.DataModel | None,
                  known: frozenset[str] | None) -> None:
        """The record's own fields, then the event it becomes against the contract (paths are the record's)."""
        v = Violations()
        clock = time.time()
        for i, (record, event) in enumerate(zip(records, events)):
            path = f"records[{i}]"
            before = len(v.items)
            if len(record.record_id) > MAX_RECORD_ID:
                v.add(f"{path}.record_id", f"must be at most {MAX_RECORD_ID} characters")
            elif "\x00" in record.record_id:
                v.add(f"{path}.record_id", "must not contain NUL characters")
            if record.interaction_name and not NAME.match(record.interaction_name):
                v.add(f"{path}.interaction_name", "must match ^[a-z][a-z0-9_]{0,63}$")
            if record.dataset and not NAME.match(record.dataset):
                v.add(f"{path}.dataset", "must match ^[a-z][a-z0-9_]{0,63}$")
            if len(v.items) == before:  # else the event's name and source, taken from these, would be named wrongly
                validate_event(event, path, v, clock, known)
            if event.ByteSize() > contract.MAX_EVENT_BYTES:
                v.add(path, f"must be at most {contract.MAX_EVENT_BYTES:,} bytes serialized")
            if model is not None:
                self._check_model(record, model, path, v)
        v.raise_if_any()

    @staticmethod
    def _check_model(record: pb.SyncRecord, model: pb.DataModel, path: str, v: Violations) -> None:
        if model.datasets and record.dataset not in model.datasets:
            v.add(f"{path}.dataset", "is not a dataset of the data model")
        _check_values(json_format.MessageToDict(record.attributes), model.attributes, f"{path}.attributes", v)
        types = {o.type: o for o in model.object_types}
        for j, obj in enumerate(record.profile_objects):
            declared = types.get(obj.type)
            if declared is None:
                v.add(f"{path}.profile_objects[{j}].type", "is not an object type of the data model")
            else:
                _check_values(json_format.MessageToDict(obj.attributes), declared.attributes,
                              f"{path}.profile_objects[{j}].attributes", v)
