"""A purchases CSV with 1% bad rows, for the CLI import test and tests/bench/import.py."""

from __future__ import annotations

import csv
import time
from pathlib import Path

BAD_EVERY = 100  # 1% of the rows are bad


def write_purchases(path: Path, rows: int, *, bad_every: int = BAD_EVERY) -> dict[int, str]:
    """A purchases CSV; every bad_every-th row is bad in one of four ways. Returns {row number: bad column}."""
    now = int(time.time()) - 3600
    bad: dict[int, str] = {}
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["order", "customer", "email", "at", "sku", "qty", "price", "channel"])
        for n in range(1, rows + 1):
            row = [f"o{n}", f"c{n % 5000}", f"user{n % 5000}@example.com", str(now + n % 3000), f"sku{n % 300}",
                   str(1 + n % 3), f"{5 + n % 40}.5", "web"]
            if n % bad_every == 0:
                kind = (n // bad_every) % 4
                if kind == 0:      # not a number: refused while converting
                    row[6], bad[n] = "cheap", "price"
                elif kind == 1:    # not a time: refused while converting
                    row[3], bad[n] = "last tuesday", "at"
                elif kind == 2:    # a year ahead: refused by the contract's checks before sending (event_time)
                    row[3], bad[n] = str(now + 365 * 86400), "at"
                else:              # a purchase of no item: refused by the gateway (line_items)
                    row[4], bad[n] = "", "sku"
            out.writerow(row)
    return bad


# The `tailor import events` flags that map the file's columns.
MAPPING = ("--map", "message_id=order", "--map", "identity.customer_id=customer", "--map", "identity.email=email",
           "--map", "time=at", "--map", "item_id=sku", "--map", "quantity=qty", "--map", "unit_price=price",
           "--map", "property.channel=channel", "--event-type", "purchase")
