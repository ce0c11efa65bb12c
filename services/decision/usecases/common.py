"""What several use cases share: ids, the clock, request limits and the experiment lookup."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from services.decision.experiments import Experiment
from services.decision.ports import Repository
from services.decision.validation import experiment_not_found, raise_violation
from shared.errors import FailedPrecondition, quote

MAX_POINTS_PER_QUALIFY = 50
MAX_LOG_ENTRIES = 1000


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


async def load_experiment(repo: Repository, tenant: str, name: str) -> Experiment:
    """The named experiment; INVALID_ARGUMENT without a name, NOT_FOUND when there is none."""
    if not name:
        raise_violation("name", "must name an experiment")
    e = await repo.get_experiment(tenant, name)
    if e is None:
        raise experiment_not_found(name)
    return e


def wrong_state(e: Experiment, action: str) -> FailedPrecondition:
    return FailedPrecondition(f"experiment {quote(e.name)} is {e.state.lower()}; cannot {action} it",
                              reason="EXPERIMENT_WRONG_STATE", metadata={"experiment": e.name, "state": e.state})
