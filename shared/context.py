"""Per-call context (request id, tenant, deadline) carried in contextvars and propagated on outgoing calls."""

from __future__ import annotations

import contextvars
import time
import uuid

REQUEST_ID_HEADER = "x-request-id"
TENANT_HEADER = "x-tenant-id"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
tenant_var: contextvars.ContextVar[str] = contextvars.ContextVar("tenant_id", default="")
# Absolute time.monotonic() at which the current call's deadline expires; None means no deadline.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def new_request_id() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


def current_tenant() -> str:
    """The tenant of the call being served; empty outside a call."""
    return tenant_var.get()


def remaining_seconds() -> float | None:
    """Seconds left before the current call's deadline, or None when it has none."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()
