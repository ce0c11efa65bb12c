"""Settings read once from the environment; a missing or malformed value stops start-up naming the variable."""

from __future__ import annotations

import os


class SettingsError(SystemExit):
    """Raised at start-up when an environment variable is missing or malformed."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {name}: {problem}")
        self.name = name


def env_str(name: str, default: str | None = None) -> str:
    """Returns the variable's value, or default; with no default the variable is required."""
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise SettingsError(name, "is required but not set")
        return default
    return value


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Returns the variable as an int within [minimum, maximum], or default when unset."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(name, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(name, f"must be at most {maximum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    """Returns the variable as a float no smaller than minimum, or default when unset."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(name, f"must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(name, f"must be at least {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    """Returns the variable as a bool (1/true/yes or 0/false/no), or default when unset."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(name, f"must be true or false, got {raw!r}")


# Default ports of the five services; each can be overridden with TAILOR_<SERVICE>_PORT.
DEFAULT_PORTS = {
    "gateway": 50051,
    "identity": 50052,
    "profile_graph": 50053,
    "recommender": 50054,
    "decision": 50055,
}


def service_port(service: str) -> int:
    """The port a service listens on: TAILOR_<SERVICE>_PORT or its default (0 picks a free port)."""
    return env_int(f"TAILOR_{service.upper()}_PORT", DEFAULT_PORTS[service], minimum=0, maximum=65535)


def service_address(service: str) -> str:
    """Where other processes reach a service: TAILOR_<SERVICE>_ADDR or 127.0.0.1 on its port."""
    return env_str(f"TAILOR_{service.upper()}_ADDR", f"127.0.0.1:{service_port(service)}")
