"""Use case: the decision log (append, count, list)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from services.decision.bandit import SEGMENT_NAME
from services.decision.domain import LogEntry, LogGroup, LogStats
from services.decision.ports import Repository
from services.decision.usecases.common import MAX_LOG_ENTRIES
from services.decision.validation import MAX_TEXT, validate_window
from shared import paging
from shared.errors import Violations, quote

MAX_STATS_WINDOW = timedelta(days=366)  # GetDecisionLogStats: at most a year at a time


class DecisionLog:
    """Appends to, counts and lists a tenant's decision log."""

    def __init__(self, repo: Repository):
        self.repo = repo

    async def append(self, tenant: str, entries: Sequence[LogEntry], groups: Sequence[LogGroup] = ()) -> int:
        """Appends log rows in one round trip: entries one by one, groups with the fields their rows share once;
        a re-sent personalization id is written once.

        The exposure_conflict flag of each row is set by the repository when it writes the row.
        """
        v = Violations()
        if len(entries) + sum(len(g) for g in groups) > MAX_LOG_ENTRIES:
            v.add("entries", f"must hold at most {MAX_LOG_ENTRIES} rows, counted with those of groups")
        for i, e in enumerate(entries):
            _check_id(e.personalization_id, f"entries[{i}].personalization_id", v)
            _check_shared(e, f"entries[{i}].", v)
        for i, g in enumerate(groups):
            _check_shared(g.shared, f"groups[{i}].shared.", v)
            for j, personalization_id in enumerate(g.personalization_ids):
                _check_id(personalization_id, f"groups[{i}].rows[{j}].personalization_id", v)
        v.raise_if_any()
        if not entries and not groups:
            return 0
        now = datetime.now(UTC)
        return await self.repo.insert_log(tenant, [e if e.log_time else replace(e, log_time=now) for e in entries],
                                          [g if g.shared.log_time else replace(g, shared=replace(g.shared, log_time=now))
                                           for g in groups])

    async def stats(self, tenant: str, start: datetime | None, end: datetime | None) -> list[LogStats]:
        """Counts of the log in [start, end): the whole window first, then per point by name."""
        v = Violations()
        validate_window(start, end, MAX_STATS_WINDOW, v)
        v.raise_if_any()
        assert start is not None and end is not None  # refused above otherwise
        return await self.repo.log_stats(tenant, start, end)

    async def page(self, tenant: str, individual: str, size: int, token: str) -> tuple[list[LogEntry], str]:
        """One page of log rows, newest first, optionally of one individual, and the next page token."""
        v = Violations()
        listing = f"decision_log/{individual}"
        limit = paging.page_size(size, 100, 1000, v)
        after = paging.decode_token(token, listing, (datetime, str), v)
        v.raise_if_any()
        rows = await self.repo.list_log(tenant, individual, (after[0], after[1]) if after else None, limit + 1)
        return paging.next_page(rows, limit, listing, lambda e: [e.log_time, e.personalization_id])


def _check_id(personalization_id: str, field: str, v: Violations) -> None:
    if not personalization_id:
        v.add(field, "must not be empty")
    elif len(personalization_id) > MAX_TEXT:
        v.add(field, f"must be at most {MAX_TEXT} characters")


def _check_shared(e: LogEntry, prefix: str, v: Violations) -> None:
    """The checks of a row's fields other than its personalization id (prefix: where the caller sent them)."""
    if not e.point_name:
        v.add(f"{prefix}point_name", "must name the point served")
    if e.cohort_id and not e.experiment_id:
        v.add(f"{prefix}experiment_id", "must name the experiment of the cohort")
    if e.bandit_segment and not SEGMENT_NAME.match(e.bandit_segment):
        v.add(f"{prefix}bandit_segment", "must be empty or a segment name (^[a-z][a-z0-9_]{0,63}$)")
    if not _all_finite(e.served):
        v.add(f"{prefix}served", "must hold finite numbers only (no NaN nor infinity)")
    for stage, ms in e.stage_ms.items():
        if not math.isfinite(ms):
            v.add(f"{prefix}stage_ms[{quote(stage)}]", "must be a finite number")


def _all_finite(value: Any) -> bool:
    """True when no number anywhere in a JSON-like value is NaN or infinite (the log stores it as JSON)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True
