"""Bench: our identity resolution vs Splink (DuckDB) on the labelled Splink data sets, in the same run.

Ours: the identity service's use-case layer (services/identity/service.py + postgres.py) on a real embedded
PostgreSQL: the data set's ruleset is created with CreateRuleset's use case, then every record is resolved in
real time with ResolveIdentities (batches of 1,000, in file order), exactly the pipeline's code path; the
clusters are the unified ids. Splink: the model its own documentation builds for that data set (fake_1000: tutorials 4
and 5, clusters at 0.5; historical_50k: the "real historical persons" example, ten blocking rules, term frequencies,
clusters at 0.95). Both are scored by pairwise precision, recall and F1 against the
`cluster` column; a RunRuleset over the stored records is timed and scored too.
Then ResolveIdentities latency at concurrency 1 with 100,000 individuals loaded.
hist50k_cpu_s is the CPU seconds (this process and PostgreSQL with its backends) of our historical_50k real-time run:
steadier than seconds on a shared machine. With BENCH_PROFILE_DIR=folder, py-spy records this process during that
run and the summary (kinds of work, functions by self time) is printed.
The probabilistic rows: the data set's probabilistic rule alone and with the deterministic rules, trained with
TrainMatchModel's use case on the loaded records and applied by RunRuleset (hist50k_rerun_s times that re-run).
The process collects garbage with the identity service's thresholds (services.identity.server.GC_THRESHOLDS, which
its process sets through shared.runtime.serve): the use case runs here as it runs there. Splink's runs share
the process and so the thresholds. With Python's defaults the collector took 3.6-4.3 s of this process's ~9 s of CPU
in the historical_50k run (22 full collections over the 50,000 decoded records the repository keeps).
The last line is the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "protos"), str(ROOT / "tests" / "bench")]

import _identity_data as data

import services.identity.server as server_module
from services.identity.match_models import MatchModels
from services.identity.matching import IdentityType
from services.identity.postgres import PostgresRepository
from services.identity.server import SCHEMA
from services.identity.service import IdentityService, Settings
from shared.context import tenant_var
from shared.runtime import prepare_schema
from tests.bench import _pyspy
from tests.bench._common import free_port, percentile

BATCH = 1000
LOADED = 100_000
SAMPLES = 2000
PROFILE = os.environ.get("BENCH_PROFILE_DIR", "")



def _new_tenant() -> str:
    """A fresh tenant, also set as the one this task's connections serve (row-level security)."""
    tenant = f"bench_{uuid.uuid4().hex[:8]}"
    tenant_var.set(tenant)
    return tenant


async def _final(service: IdentityService, rows: list[data.Row]) -> dict[str, str]:
    """Each row's survivor now (later merges move earlier records), looked up by its identities like the decide path,
    1,000 at a time."""
    out: dict[str, str] = {}
    for i in range(0, len(rows), BATCH):
        batch = rows[i:i + BATCH]
        found = await service.resolve(tenant_var.get(), [r.identities for r in batch], lookup_only=True)
        out.update({row.record_id: r.individual_id for row, r in zip(batch, found)})
    return out


async def ours(service: IdentityService, rows: list[data.Row], rules, custom, email_unique: bool, pg_port: int,
               profile: str = ""):
    """Resolves every row through the service; returns (accuracy, seconds, re-run accuracy, re-run seconds, CPU
    seconds of this process and PostgreSQL while resolving)."""
    tenant = _new_tenant()
    meter = _pyspy.CpuMeter({"bench": os.getpid()}, pg_port)
    start = time.perf_counter()
    with _pyspy.recording({"bench": os.getpid()}, Path(profile)) if profile else contextlib.nullcontext():
        if not email_unique:
            await service.upsert_identity_type(tenant, IdentityType("email", False, "EMAIL"))
        await service.create_ruleset(tenant, rules, custom)
        for i in range(0, len(rows), BATCH):
            batch = rows[i:i + BATCH]
            await service.resolve(
                tenant, [r.identities for r in batch], lookup_only=False, attributes=[r.attributes for r in batch])
        predicted = await _final(service, rows)
    seconds = time.perf_counter() - start
    cpu = sum(meter.used().values())
    if profile:
        print("\n".join(_pyspy.summary(Path(profile), ["bench"], seconds)))
    accuracy = data.pairwise(predicted, {r.record_id: r.cluster for r in rows})
    # A full re-run of the ruleset over the stored records (RunRuleset's use case), then where each record went.
    start = time.perf_counter()
    _ = [step async for step in service.run_ruleset(tenant)]
    rerun_seconds = time.perf_counter() - start
    rerun = data.pairwise(await _final(service, rows), {r.record_id: r.cluster for r in rows})
    return accuracy, seconds, rerun, rerun_seconds, cpu


async def ours_probabilistic(service: IdentityService, models: MatchModels, rows: list[data.Row], rules, custom,
                             email_unique: bool):
    """A ruleset with a probabilistic rule: every record resolved in real time (the rule matches nothing before it is
    trained), TrainMatchModel, then RunRuleset with the model. Returns (accuracy, train seconds, re-run seconds)."""
    tenant = _new_tenant()
    if not email_unique:
        await service.upsert_identity_type(tenant, IdentityType("email", False, "EMAIL"))
    await service.create_ruleset(tenant, rules, custom)
    for i in range(0, len(rows), BATCH):
        batch = rows[i:i + BATCH]
        await service.resolve(tenant, [r.identities for r in batch], lookup_only=False,
                              attributes=[r.attributes for r in batch])
    start = time.perf_counter()
    _ = [step async for step in models.train(tenant)]
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _ = [step async for step in service.run_ruleset(tenant)]
    rerun_seconds = time.perf_counter() - start
    return data.pairwise(await _final(service, rows), {r.record_id: r.cluster for r in rows}), train_seconds, rerun_seconds


def splink_run(table, comparisons, prediction_blocks, prior_rules, recall, u_pairs, em_blocks, em_without_tf,
               predict_threshold, cluster_threshold, db_api=None):
    """Splink's dedupe recipe on a registered table: the prior from deterministic rules and a recall guess, u by
    random sampling, m by EM on each training blocking rule, then predict and cluster; returns (accuracy, seconds)."""
    from splink import DuckDBAPI, Linker, SettingsCreator

    start = time.perf_counter()
    db_api = db_api or DuckDBAPI()
    settings = SettingsCreator(link_type="dedupe_only", comparisons=comparisons,
                               blocking_rules_to_generate_predictions=prediction_blocks,
                               retain_intermediate_calculation_columns=True)
    linker = Linker(db_api.register(table), settings, log_level=logging.ERROR)
    linker.training.estimate_probability_two_random_records_match(prior_rules, recall=recall)
    linker.training.estimate_u_using_random_sampling(max_pairs=u_pairs)
    for block in em_blocks:
        linker.training.estimate_parameters_using_expectation_maximisation(
            block, estimate_without_term_frequencies=em_without_tf)
    pairs = linker.inference.predict(threshold_match_probability=predict_threshold)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(pairs, cluster_threshold)
    predicted = {str(r["unique_id"]): str(r["cluster_id"]) for r in clusters.as_record_list()}
    seconds = time.perf_counter() - start
    return predicted, seconds


def _truth(table) -> dict[str, str]:
    return {str(u): str(c) for u, c in zip(table.column("unique_id").to_pylist(), table.column("cluster").to_pylist())}


def splink_fake_1000():
    """Splink's tutorial model for fake_1000 (tutorials 4 and 5: estimating parameters, predicting results)."""
    import pyarrow.csv as pv
    import splink.comparison_library as cl
    from splink import ColumnExpression, block_on

    table = pv.read_csv(data.FAKE_1000, convert_options=pv.ConvertOptions(
        strings_can_be_null=True, column_types={"unique_id": "string", "cluster": "string", "dob": "string"}))
    comparisons = [cl.NameComparison("first_name"), cl.NameComparison("surname"),
                   cl.LevenshteinAtThresholds(ColumnExpression("dob").cast_to_string(), 1),
                   cl.ExactMatch("city").configure(term_frequency_adjustments=True), cl.EmailComparison("email")]
    prior_rules = [block_on("first_name", "dob"), "l.first_name = r.first_name and levenshtein(r.surname, l.surname) <= 2",
                   block_on("email")]
    predicted, seconds = splink_run(table, comparisons, [block_on("first_name", "city"), block_on("surname")],
                                    prior_rules, 0.7, 2e6, [block_on("first_name", "surname"), block_on("dob")], False,
                                    0.2, 0.5)
    return data.pairwise(predicted, _truth(table)), seconds


def splink_hist_50k():
    """Splink's example model for historical_50k ("Linking a dataset of real historical persons")."""
    import pyarrow.parquet as pq
    import splink.comparison_library as cl
    from splink import DuckDBAPI, block_on

    table = pq.read_table(data.HIST_50K)
    table = table.select([c for c in table.column_names if c != "__index_level_0__"])
    start = time.perf_counter()
    db_api = DuckDBAPI()
    # Its forename-surname comparison weighs whole names by their frequency, from a concatenated column.
    frame = db_api.duckdb_con.from_arrow(table).project("*, first_name || ' ' || surname as first_name_surname_concat")
    comparisons = [cl.ForenameSurnameComparison("first_name", "surname",
                                                forename_surname_concat_col_name="first_name_surname_concat"),
                   cl.DateOfBirthComparison("dob", input_is_string=True), cl.PostcodeComparison("postcode_fake"),
                   cl.ExactMatch("birth_place").configure(term_frequency_adjustments=True),
                   cl.ExactMatch("occupation").configure(term_frequency_adjustments=True)]
    prediction_blocks = [
        block_on("substr(first_name,1,3)", "substr(surname,1,4)"), block_on("surname", "dob"),
        block_on("first_name", "dob"), block_on("postcode_fake", "first_name"), block_on("postcode_fake", "surname"),
        block_on("dob", "birth_place"), block_on("substr(postcode_fake,1,3)", "dob"),
        block_on("substr(postcode_fake,1,3)", "first_name"), block_on("substr(postcode_fake,1,3)", "surname"),
        block_on("substr(first_name,1,2)", "substr(surname,1,2)", "substr(dob,1,4)")]
    prior_rules = [block_on("first_name", "surname", "dob"),
                   block_on("substr(first_name,1,2)", "surname", "substr(postcode_fake,1,2)"),
                   block_on("dob", "postcode_fake")]
    predicted, seconds = splink_run(frame, comparisons, prediction_blocks, prior_rules, 0.6, 1e7,
                                    [block_on("first_name", "surname"), block_on("dob")], True, None, 0.95, db_api)
    return data.pairwise(predicted, _truth(table)), time.perf_counter() - start


async def resolve_latency(service: IdentityService) -> list[float]:
    """ResolveIdentities of one known email + device at concurrency 1, with LOADED individuals in the tenant."""
    tenant = _new_tenant()
    for i in range(0, LOADED, BATCH):
        await service.resolve(tenant, [[("email", f"p{j}@example.com"), ("device_id", f"d{j}")]
                                       for j in range(i, i + BATCH)], lookup_only=False)
    samples = []
    for n in range(SAMPLES + 200):
        j = (n * 7919) % LOADED
        start = time.perf_counter()
        await service.resolve(tenant, [[("email", f"p{j}@example.com"), ("device_id", f"d{j}")]], lookup_only=False)
        if n >= 200:
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def _row(name, system, acc, seconds, base_seconds):
    ratio = f"{seconds / base_seconds:6.2f}x" if base_seconds else "      "
    print(f"{name:<10} {system:<7} {acc.precision:9.4f} {acc.recall:7.4f} {acc.f1:7.4f} "
          f"{acc.clusters:>7}/{acc.true_clusters:<7} {seconds:9.2f} {ratio}")


async def main() -> None:
    logging.disable(logging.CRITICAL)
    gc.set_threshold(*server_module.GC_THRESHOLDS)  # as in the identity service's process
    from shared.embedded_pg import EmbeddedPostgres

    home = Path(tempfile.mkdtemp(prefix="tailor-bench-identity-"))
    pg = EmbeddedPostgres(data_dir=home / "pg", port=free_port())
    pg.start()
    try:
        pool = await prepare_schema(pg.admin_dsn, SCHEMA, server_module.__file__)
        repository = PostgresRepository(pool)
        service = IdentityService(repository, settings=Settings())
        models = MatchModels(repository, service)
        fake_rows, hist_rows = data.load_fake_1000(), data.load_hist_50k()
        fake_ours, fake_ours_s, fake_rerun, fake_rerun_s, _ = await ours(
            service, fake_rows, data.FAKE_RULES, [], False, pg.port)
        fake_prob, fake_prob_train_s, fake_prob_s = await ours_probabilistic(
            service, models, fake_rows, [data.FAKE_PROBABILISTIC], [], False)
        fake_mixed, fake_mixed_train_s, fake_mixed_s = await ours_probabilistic(
            service, models, fake_rows, data.FAKE_RULES + [data.FAKE_PROBABILISTIC], [], False)
        fake_splink, fake_splink_s = splink_fake_1000()
        hist_ours, hist_ours_s, hist_rerun, hist_rerun_s, hist_cpu_s = await ours(
            service, hist_rows, data.HIST_RULES, data.HIST_CUSTOM_ATTRIBUTES, True, pg.port, PROFILE)
        hist_prob, hist_prob_train_s, hist_prob_s = await ours_probabilistic(
            service, models, hist_rows, [data.HIST_PROBABILISTIC], data.HIST_CUSTOM_ATTRIBUTES, True)
        hist_mixed, hist_mixed_train_s, hist_mixed_s = await ours_probabilistic(
            service, models, hist_rows, data.HIST_RULES + [data.HIST_PROBABILISTIC], data.HIST_CUSTOM_ATTRIBUTES, True)
        hist_splink, hist_splink_s = splink_hist_50k()
        latency = await resolve_latency(service)
        await pool.close()
    finally:
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)  # 1.6 GB of data a run (as scratch_database removes its own)

    print(f"{'data set':<10} {'system':<7} {'precision':>9} {'recall':>7} {'F1':>7} {'clusters/true':>15} "
          f"{'seconds':>9} {'vs splink':>7}")
    _row("fake_1000", "ours", fake_ours, fake_ours_s, fake_splink_s)
    _row("fake_1000", "splink", fake_splink, fake_splink_s, fake_splink_s)
    _row("fake_1000", "rerun", fake_rerun, fake_rerun_s, fake_splink_s)
    _row("fake_1000", "prob", fake_prob, fake_prob_s, fake_splink_s)
    _row("fake_1000", "mixed", fake_mixed, fake_mixed_s, fake_splink_s)
    _row("hist_50k", "ours", hist_ours, hist_ours_s, hist_splink_s)
    _row("hist_50k", "splink", hist_splink, hist_splink_s, hist_splink_s)
    _row("hist_50k", "rerun", hist_rerun, hist_rerun_s, hist_splink_s)
    _row("hist_50k", "prob", hist_prob, hist_prob_s, hist_splink_s)
    _row("hist_50k", "mixed", hist_mixed, hist_mixed_s, hist_splink_s)
    print("ours = real-time ResolveIdentities of every record (batches of 1,000); rerun = RunRuleset over the same "
          "stored records afterwards (blocks over TAILOR_IDENTITY_MAX_BLOCK are capped in a different order); "
          "prob = the probabilistic rule alone, mixed = with the deterministic rules: records loaded in real time, "
          "TrainMatchModel, then RunRuleset (seconds: the re-run)")
    print(f"TrainMatchModel seconds: fake_1000 {fake_prob_train_s:.2f} (mixed {fake_mixed_train_s:.2f}), "
          f"hist_50k {hist_prob_train_s:.2f} (mixed {hist_mixed_train_s:.2f}); Splink's seconds include its training")
    p50, p99 = percentile(latency, 50), percentile(latency, 99)
    print(f"ResolveIdentities (known email + device, {LOADED:,} individuals loaded, concurrency 1, "
          f"{len(latency)} calls): p50 {p50:.2f} ms, p99 {p99:.2f} ms (target p99 <= 5 ms)")
    print(f"fake1000_f1_ours={fake_ours.f1:.4f} fake1000_f1_splink={fake_splink.f1:.4f} "
          f"hist50k_f1_ours={hist_ours.f1:.4f} hist50k_f1_splink={hist_splink.f1:.4f} "
          f"hist50k_s_ours={hist_ours_s:.2f} hist50k_s_splink={hist_splink_s:.2f} hist50k_cpu_s={hist_cpu_s:.2f} "
          f"resolve_p50_ms={p50:.2f} resolve_p99_ms={p99:.2f} "
          f"fake1000_f1_prob={fake_prob.f1:.4f} fake1000_f1_mixed={fake_mixed.f1:.4f} "
          f"hist50k_f1_prob={hist_prob.f1:.4f} hist50k_f1_mixed={hist_mixed.f1:.4f} "
          f"hist50k_rerun_s={hist_prob_s:.2f} hist50k_train_s={hist_prob_train_s:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("TAILOR_LOG_LEVEL", "WARNING")
    asyncio.run(main())
