"""Domain types of the decision service: points, decisions, qualifications and log rows (the storage port is
in ports.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.decision import growthbook
from services.decision.bandit import BanditConfig, Choice
from services.decision.experiments import Assignment


@dataclass(frozen=True)
class TemplateField:
    """One typed field of a response template."""

    name: str
    type: str
    required: bool = False


@dataclass(frozen=True)
class Template:
    """The typed shape of a point's responses."""

    fields: tuple[TemplateField, ...] = ()
    item_attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Point:
    """A named slot where a channel asks for content."""

    point_id: str
    name: str
    description: str
    type: str
    template: Template
    archived: bool = False
    consent_purpose: str = ""
    requires_authentication: bool = False
    bandit: BanditConfig | None = None  # set: the point chooses among matching decisions by Thompson sampling


@dataclass(frozen=True)
class Decision:
    """One option on a point: a rule, a priority, and either content or a recommender call."""

    decision_id: str
    point_name: str
    name: str
    priority: int = 0
    rule: str = ""
    fallback: bool = False
    content: dict[str, Any] | None = None
    recommender: str = ""
    count: int = 0
    archived: bool = False
    consent_purpose: str = ""


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one rule."""

    decision_id: str
    decision_name: str
    matched: bool
    error: str = ""


@dataclass(frozen=True)
class Qualification:
    """The point, the winning decision (or None) and every rule evaluated; the consent purposes missing that kept
    decisions from being served, and whether the point wanted a known individual and had none."""

    point: Point
    decision: Decision | None
    evaluations: list[Evaluation]
    assignment: Assignment | None = None
    missing_consents: tuple[str, ...] = ()
    authentication_required: bool = False
    bandit: Choice | None = None  # how a bandit point chose (its decision is a trial once logged)
    holdout: bool = False  # the individual is in the tenant's holdout: only the point's default was served


@dataclass(frozen=True)
class LogStats:
    """Decision-log counts of a window: of one point, or of all (point_name None)."""

    point_name: str | None
    requests: int
    served: int
    individuals: int


@dataclass(frozen=True)
class LogEntry:
    """One personalization served."""

    personalization_id: str
    point_name: str
    request_id: str = ""
    point_id: str = ""
    decision_id: str = ""
    unified_individual_id: str = ""
    channel: str = ""
    correlation_id: str = ""
    anchor_id: str = ""
    served: dict[str, Any] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    log_time: datetime | None = None
    experiment_id: str = ""
    cohort_id: str = ""
    exposure_conflict: bool = False
    batch_job_id: str = ""
    served_item_ids: tuple[str, ...] = ()  # given by the caller (batch jobs), else read from served
    bandit_trial: bool = False  # the point's bandit chose the decision: a trial of that offer
    bandit_segment: str = ""  # the segment of the posteriors it counts in ("" for the global ones)
    holdout: bool = False  # served to an individual of the tenant's holdout

    @property
    def item_ids(self) -> list[str]:
        """The ids of the items served, in position order (for attribution)."""
        if self.served_item_ids:
            return list(self.served_item_ids)
        data = self.served.get("data") if isinstance(self.served, dict) else None
        return [d["item_id"] for d in data or () if isinstance(d, dict) and isinstance(d.get("item_id"), str)]


@dataclass(frozen=True)
class LogGroup:
    """Log rows that share every field but who was served what (a batch job's page): the shared fields once (their
    personalization id, individual and items unused), then each row's personalization id, individual and items."""

    shared: LogEntry
    personalization_ids: Sequence[str]
    unified_individual_ids: Sequence[str]
    item_ids: Sequence[Sequence[str]]

    def __len__(self) -> int:
        return len(self.personalization_ids)


class NameTaken(Exception):
    """Raised by a repository when another decision of the point already has the name."""


class AlreadyRunning(Exception):
    """Raised by a repository when another experiment outside any layer already runs on the point."""


class LayerTaken(Exception):
    """Raised by a repository when a running experiment of the layer claims part of the same slice."""

    def __init__(self, other: str):
        super().__init__(other)
        self.other = other


@dataclass(frozen=True)
class Holdout:
    """The tenant's holdout: a share of unified individuals who get only each point's default decision."""

    fraction_bps: int = 0
    seed: str = ""
    update_time: datetime | None = None

    def holds(self, unified_id: str) -> bool:
        """Whether the individual is held out (GrowthBook hash v2 of the id with the seed, below the fraction)."""
        if self.fraction_bps <= 0 or not unified_id:
            return False
        n = growthbook.gb_hash(self.seed or "holdout", unified_id, 2) or 0.0
        return n < self.fraction_bps / 10_000
