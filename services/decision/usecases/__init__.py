"""The decision service's use cases, one class per job; `services.decision.service` wires them together."""
