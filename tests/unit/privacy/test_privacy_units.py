"""The pure parts of the right to be forgotten: suppressed subjects in a resolve, tombstones, id validation,
model rows, and the CLI's requests."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from services.identity.postgres_privacy import INDIVIDUAL
from services.identity.privacy import tombstone
from services.identity.service import IdentityService
from services.recommender.config import ALS, BPR, EASE, ITEM_KNN
from services.recommender.learned import Model
from services.recommender.postgres_privacy import without_individuals
from shared.errors import InvalidArgument
from shared.privacy import document, validate_ids
from tailor_cli import cli
from tests.unit.identity.fakes import FakeRepository


async def test_suppressed_subjects_are_answered_in_place_and_the_others_resolve_as_usual():
    service = IdentityService(FakeRepository())
    asked = []

    async def blocked(tenant, keys):
        asked.append(keys)
        return {("email", "gone@example.com")}

    service.blocked = blocked
    answers = await service.resolve("t", [[("device_id", "d1")], [("email", " Gone@Example.com"), ("device_id", "d2")],
                                          [("device_id", "d1"), ("email", "kept@example.com")]], lookup_only=False)

    assert [a.suppressed for a in answers] == [False, True, False]
    assert answers[1].individual_id == "" and answers[0].individual_id == answers[2].individual_id != ""
    assert ("email", "gone@example.com") in asked[0]  # the check sees normalized identities
    [looked_up] = await service.resolve("t", [[("device_id", "d2")]], lookup_only=True)
    assert looked_up.individual_id == "" and not looked_up.suppressed  # d2 was never stored


def test_tombstones_are_salted_and_depend_on_type_and_value():
    salt = b"s" * 32
    hashed = tombstone(salt, "email", "ann@example.com")
    assert len(hashed) == 32 and b"ann" not in hashed
    assert hashed != tombstone(b"t" * 32, "email", "ann@example.com")
    assert hashed != tombstone(salt, "customer_id", "ann@example.com")
    assert tombstone(salt, INDIVIDUAL, "ind_1") != tombstone(salt, "email", "ind_1")


def test_ids_are_validated_one_violation_per_bad_id_and_deduplicated():
    assert validate_ids(["a", "b", "a"]) == ["a", "b"]
    with pytest.raises(InvalidArgument) as error:
        validate_ids(["ok", "", "x" * 201, "a\x00b"])
    assert [f for f, _ in error.value.violations] == ["unified_individual_ids[1]", "unified_individual_ids[2]",
                                                       "unified_individual_ids[3]"]
    with pytest.raises(InvalidArgument):
        validate_ids([])


def test_an_export_document_keeps_only_tables_with_rows():
    assert document({"events": [{"a": 1}], "consents": []}) == '{"events":[{"a":1}]}'


def _models() -> list[Model]:
    people, items = np.array(["u1", "u2", "u3"]), np.array(["i1", "i2"])
    factors = dict(user_factors=np.arange(12, dtype=np.float32).reshape(3, 4),
                   item_factors=np.ones((2, 4), dtype=np.float32))
    neighbours = dict(similarity=sp.csr_matrix(np.array([[0, 0.5], [0.5, 0]], dtype=np.float32)),
                      user_items=sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)))
    return [Model(ALS, people, items, **factors), Model(BPR, people, items, **factors),
            Model(ITEM_KNN, people, items, **neighbours), Model(EASE, people, items, **neighbours)]


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.algorithm)
def test_a_model_without_an_individual_keeps_every_other_row_and_its_scores(model):
    smaller = Model.from_bytes(without_individuals(model, {"u2", "nobody"}).to_bytes())

    assert sorted(smaller.row) == ["u1", "u3"]
    assert np.array_equal(smaller.scores(np.array([smaller.row["u3"]])), model.scores(np.array([model.row["u3"]])))
    assert without_individuals(model, {"nobody"}) is None


def test_the_cli_refuses_to_forget_without_yes_and_builds_the_lift_request(capsys):
    assert cli.run(["forget", "--identity", "email:a@b.c", "--api-key", "tlr_x"]) == 1
    assert "--yes" in capsys.readouterr().err
    request = cli.lift_request(["email:a@b.c", "device_id:d:1"])
    assert [(i.type, i.value) for i in request.identities] == [("email", "a@b.c"), ("device_id", "d:1")]
