"""Bench: the cost of the event contract's generated checks at ingest, per event, in CPU time.

Batches of 1,000 events as ingest gets them: product views (identities and an item, as tests/bench/ingest.py
sends) and purchases with three lines, two attributes and a property. Baseline, measured in the same run:
serializing the same events, which ingest does anyway to store them. Rows: the fast check alone, the whole of
Ingest.prepare (checks, event-type rules, serialization, routing), and the detailed check that runs only for an
invalid event. Process time, best of 7, so other work on the machine counts less. The last line is the summary.
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from personalization.common.v1 import common_pb2
from services.gateway.ingest import Ingest
from shared import contract
from shared.errors import Violations

N = 1000
KNOWN = frozenset({"device_id", "email"})


def views() -> list[common_pb2.Event]:
    now = int(time.time())
    out = []
    for n in range(N):
        event = common_pb2.Event(message_id=f"ev-{n}", type=common_pb2.EVENT_TYPE_PRODUCT_VIEW, item_id=f"sku-{n % 500}",
                                 identities=[common_pb2.Identity(type="device_id", value=f"d{n % 100}")])
        event.event_time.seconds = now
        out.append(event)
    return out


def purchases() -> list[common_pb2.Event]:
    now = int(time.time())
    out = []
    for n in range(N):
        event = common_pb2.Event(message_id=f"p-{n}", type=common_pb2.EVENT_TYPE_PURCHASE, source="web",
                                 identities=[common_pb2.Identity(type="email", value=f"u{n}@example.com")],
                                 line_items=[common_pb2.LineItem(item_id=f"sku-{k}", quantity=1, unit_price=3.5)
                                             for k in range(3)])
        event.event_time.seconds = now
        event.attributes.update({"first_name": "Ann", "age": 31})
        event.properties.update({"url": f"https://shop.example.com/checkout/{n}"})
        out.append(event)
    return out


def per_event_us(work) -> float:
    return min(timeit.Timer(work, timer=time.process_time).repeat(number=3, repeat=7)) / (3 * N) * 1e6


def main() -> None:
    check = contract.checker(common_pb2.Event.DESCRIPTOR, check_size=False)
    rows = []
    summary = {}
    for name, batch in (("view", views()), ("purchase", purchases())):
        now = time.time()
        base = per_event_us(lambda batch=batch: [e.SerializeToString() for e in batch])
        ok = per_event_us(lambda batch=batch, now=now: [check.ok(e, now, KNOWN) for e in batch])
        prepare = per_event_us(lambda batch=batch: Ingest.prepare(batch, KNOWN))
        bad = [common_pb2.Event() for _ in range(N)]
        for b, e in zip(bad, batch):
            b.CopyFrom(e)
            b.message_id = ""
        detailed = per_event_us(lambda bad=bad, now=now: check.add_each(bad, "events", Violations(), now, KNOWN))
        rows += [(label, value, value / base) for label, value in (
            (f"{name}: serialize (baseline)", base), (f"{name}: contract fast check", ok),
            (f"{name}: Ingest.prepare (all of validation + serialize)", prepare),
            (f"{name}: invalid event, detailed violations", detailed))]
        summary.update({f"{name}_check_us": ok, f"{name}_prepare_us": prepare, f"{name}_serialize_us": base})
    print(f"\n{'per event (1,000-event batches)':<58}{'us':>8}{'x base':>9}")
    for label, value, ratio in rows:
        print(f"{label:<58}{value:>8.2f}{ratio:>9.2f}")
    print("\n" + " ".join(f"{k}={v:.2f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
