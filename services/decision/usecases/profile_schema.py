"""Use case: the tenant's declared profile schema."""

from __future__ import annotations

from services.decision import rules
from services.decision.ports import Repository
from services.decision.schema import ProfileSchema, check_rule, validate_schema
from shared.errors import FailedPrecondition, Violations


class ProfileSchemas:
    """Declares and reads a tenant's profile schema."""

    def __init__(self, repo: Repository):
        self.repo = repo

    async def declare(self, tenant: str, schema: ProfileSchema) -> ProfileSchema:
        """Replaces the tenant's profile schema after checking that every saved rule still fits it."""
        v = Violations()
        validate_schema({
            "attributes": list(schema.attributes),
            "insights": [(n, None) for n in schema.insights],
            "segments": [(n, None) for n in schema.segments],
            "affinities": [(n, None) for n in schema.affinities],
            "consents": [(n, None) for n in schema.consents],
            "context_attributes": list(schema.context_attributes),
        }, v)
        v.raise_if_any()
        broken = []
        for label, rule in await self.repo.all_rules(tenant):
            try:
                check_rule(rule, schema)
            except rules.RuleError as error:
                broken.append(f"{label}: {error}")
        if broken:
            raise FailedPrecondition("the schema does not fit saved rules: " + " | ".join(broken[:20]),
                                     reason="SCHEMA_BREAKS_RULES", metadata={"rules": str(len(broken))})
        await self.repo.save_schema(tenant, schema)
        return schema

    async def get(self, tenant: str) -> ProfileSchema | None:
        """The declared schema, or None."""
        return await self.repo.get_schema(tenant)
