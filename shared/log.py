"""structlog set-up: JSON lines when not on a terminal, with the request id and tenant bound from context."""

from __future__ import annotations

import logging
import sys

import structlog

from shared.context import request_id_var, tenant_var


def _add_call_context(_logger, _method, event_dict):
    request_id = request_id_var.get()
    if request_id and "request_id" not in event_dict:
        event_dict["request_id"] = request_id
    tenant = tenant_var.get()
    if tenant and "tenant" not in event_dict:
        event_dict["tenant"] = tenant
    return event_dict


def configure(service: str, level: str = "INFO") -> None:
    """Configures structlog once per process; every line carries the service name."""
    renderer = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_call_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None):
    """A structlog logger."""
    return structlog.get_logger(name)
