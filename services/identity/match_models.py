"""Use cases of probabilistic match models: TrainMatchModel, ExplainMatch, GetMatchModel (no grpc, no SQL)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from services.identity import matching, probabilistic
from services.identity.matching import Rule
from services.identity.ports import Repository
from services.identity.probabilistic import CompareField, MatchModel
from services.identity.service import IdentityService
from services.identity.subjects import validate_subjects
from services.identity.training import TrainingError, TrainingProgress, fit_model
from shared.errors import FailedPrecondition, InvalidArgument, NotFound


@dataclass(frozen=True)
class TrainedModel:
    """The outcome of a training run: the stored version and what it was trained on."""

    version: int
    ruleset_version: int
    model: MatchModel
    summary: dict


@dataclass(frozen=True)
class FieldLevel:
    """One compared field of a pair: its level (index, -1 for null) and name, and its weight."""

    field: str
    level: int
    level_name: str
    weight: float


@dataclass(frozen=True)
class Explanation:
    """How a probabilistic rule scores one pair: prior weight + field weights = score."""

    rule: str
    model_version: int
    score: float
    prior_weight: float
    threshold: float
    fields: list[FieldLevel]

    @property
    def probability(self) -> float:
        """The match probability of the score."""
        return 1.0 / (1.0 + math.pow(2.0, -self.score)) if self.score > -1000 else 0.0


@dataclass(frozen=True)
class ModelView:
    """A stored model with the fields and level names of its rule."""

    model: MatchModel
    ruleset_version: int
    fields: tuple[CompareField, ...]
    summary: dict
    created_at: datetime


def _no_rule() -> FailedPrecondition:
    return FailedPrecondition("the active ruleset has no probabilistic rule: create one with CreateRuleset",
                              reason="NO_PROBABILISTIC_RULE")


class MatchModels:
    """Training, explaining and reading the models of probabilistic rules."""

    def __init__(self, repository: Repository, service: IdentityService):
        self.repository = repository
        self.service = service

    async def train(self, tenant: str) -> AsyncIterator[TrainingProgress | TrainedModel]:
        """Trains the active probabilistic rule on all source records; yields progress, then the stored model."""
        self.service.forget_config(tenant)
        ruleset = (await self.service.config(tenant)).ruleset
        rule = ruleset.probabilistic_rule
        if rule is None:
            raise _no_rule()
        progress = TrainingProgress()

        async def run() -> TrainedModel:
            records = await self.repository.source_records(tenant)
            progress.records = len(records)
            try:
                model, summary = await asyncio.to_thread(
                    fit_model, rule, records, self.service.settings.max_block, progress)
            except TrainingError as problem:
                raise FailedPrecondition(str(problem), reason=problem.reason) from None
            progress.phase = "STORING"
            version = await self.repository.store_match_model(tenant, ruleset.version, model, summary)
            self.service.forget_config(tenant)
            return TrainedModel(version, ruleset.version, replace(model, version=version), summary)

        task = asyncio.create_task(run())
        try:
            yield progress
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done():
                    yield progress
            done = task.result()
        finally:
            if not task.done():
                task.cancel()
        yield done

    async def _rule_and_model(self, tenant: str, version: int) -> tuple[Rule, MatchModel, int]:
        if version < 0:
            raise InvalidArgument([("model_version", "must be 0 (the active model) or a model version")])
        if version == 0:
            ruleset = (await self.service.config(tenant)).ruleset
            rule = ruleset.probabilistic_rule
            if rule is None:
                raise _no_rule()
            if rule.model is None:
                raise FailedPrecondition("the probabilistic rule has no trained model: call TrainMatchModel",
                                         reason="MODEL_NOT_TRAINED", metadata={"rule": rule.name})
            return rule, rule.model, ruleset.version
        found = await self.repository.get_match_model(tenant, version)
        if found is None:
            raise NotFound(f"no match model version {version} in this tenant", reason="MATCH_MODEL_NOT_FOUND",
                           metadata={"model_version": str(version)})
        model, ruleset_version, _, _ = found
        stored_ruleset = await self.repository.get_ruleset(tenant, ruleset_version)
        rule = stored_ruleset.probabilistic_rule if stored_ruleset else None
        if rule is None or rule.name != model.rule:
            raise NotFound(f"the rule of match model version {version} no longer exists",
                           reason="MATCH_MODEL_NOT_FOUND", metadata={"model_version": str(version)})
        return rule, model, ruleset_version

    async def explain(self, tenant: str, subjects: list[list[tuple[str, str]]], attributes: list[dict[str, Any]],
                      model_version: int) -> Explanation:
        """Each field's level and weight for a pair of subjects, by the active model or a given version."""
        if len(subjects) != 2:
            raise InvalidArgument([("subjects", f"exactly two subjects are required, got {len(subjects)}")])
        config = await self.service.config(tenant)
        left, right = validate_subjects(subjects, config, self.service.settings.default_region, attributes)
        rule, model, _ = await self._rule_and_model(tenant, model_version)
        spec = rule.probabilistic
        assert spec is not None
        score, parts = matching.explain_pair(spec, model, left.record, right.record)
        fields = [FieldLevel(f.name, level, "null" if level == probabilistic.NULL else f.levels()[level], weight)
                  for f, level, weight in parts]
        return Explanation(rule.name, model.version, score, model.prior_weight, spec.threshold, fields)

    async def get(self, tenant: str, version: int) -> ModelView:
        """A trained model (0: the active one) with its rule's fields."""
        rule, model, ruleset_version = await self._rule_and_model(tenant, version)
        found = await self.repository.get_match_model(tenant, model.version)
        assert found is not None and rule.probabilistic is not None
        return ModelView(model, ruleset_version, rule.probabilistic.fields, found[2], found[3])
