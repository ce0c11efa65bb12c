"""The repository's cache of decoded source records: bounded, oldest out first."""

from __future__ import annotations

from services.identity import postgres
from services.identity.matching import Record


def test_the_record_cache_keeps_the_newest_records_up_to_its_bound(monkeypatch):
    monkeypatch.setattr(postgres, "RECORD_CACHE", 3)
    repository = postgres.PostgresRepository(pool=None)  # type: ignore[arg-type]
    for n in range(5):
        repository._remember(("t", f"rec_{n}"), Record({"k": [str(n)]}))
    assert list(repository._records) == [("t", "rec_2"), ("t", "rec_3"), ("t", "rec_4")]
