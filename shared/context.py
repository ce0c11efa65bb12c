"""Per-call context (request id, tenant, internal token, deadline) carried in contextvars and propagated on outgoing calls."""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid

from shared.errors import DeadlineExceeded

REQUEST_ID_HEADER = "x-request-id"
# No longer sent nor read: the tenant of an internal call travels in its token (shared/service_auth.py); named so
# that the refusal of a call carrying only this header can say so.
TENANT_HEADER = "x-tenant-id"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
tenant_var: contextvars.ContextVar[str] = contextvars.ContextVar("tenant_id", default="")
# The internal token the current call arrived with (domain services): forwarded on the calls it makes.
token_var: contextvars.ContextVar[str] = contextvars.ContextVar("internal_token", default="")
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


def check_deadline(what: str) -> None:
    """Raises DeadlineExceeded when the current call's deadline has passed (what: the work being stopped)."""
    left = remaining_seconds()
    if left is not None and left <= 0:
        raise DeadlineExceeded(f"the deadline passed during {what}; the work was stopped")


class Slices:
    """Long work in slices: tick() between steps yields the event loop once a slice has run `seconds`, and
    stops the work with DeadlineExceeded when the caller's deadline has passed (unless honour_deadline is off:
    work that must finish once begun, such as appending acknowledged events, only yields)."""

    def __init__(self, what: str, seconds: float = 0.002, *, honour_deadline: bool = True, pause: float = 0.001):
        self.what = what
        self.seconds = seconds
        self.pause = pause
        self.honour_deadline = honour_deadline
        self._start = time.perf_counter()

    async def tick(self) -> None:
        if time.perf_counter() - self._start >= self.seconds:
            await asyncio.sleep(self.pause)
            if self.honour_deadline:
                check_deadline(self.what)
            self._start = time.perf_counter()
