"""Where an event goes in the inbox: its routing identity's hash (route) and that hash's partition."""

from __future__ import annotations

from functools import lru_cache
from hashlib import blake2b

from personalization.common.v1 import common_pb2

# Fixed: migrations/0004_partitions.sql creates this many partition rows, and stored rows keep their partition.
PARTITIONS = 32


def route_of(event: common_pb2.Event) -> int:
    """A signed 64-bit hash of the event's first identity (type and trimmed, lower-cased value); the inbox puts it
    in the partition of this hash combined with the tenant's.

    Events of one routing identity are applied in order; put the most stable identity first."""
    identity = event.identities[0]
    return _route(identity.type, identity.value)


@lru_cache(maxsize=16_384)  # a batch's events mostly come from fewer people than events: each is hashed once
def _route(kind: str, value: str) -> int:
    key = f"{kind}\x00{value.strip().lower()}".encode()
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "big", signed=True)
