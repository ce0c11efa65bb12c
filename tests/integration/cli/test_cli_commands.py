"""The `tailor` CLI as a subprocess against the in-process suite: import, ingest, recommend, train, tenants, keys."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from personalization.recommender.v1 import recommender_service_pb2 as rec_pb
from personalization.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from services.gateway.admin import write_operator_key
from tests.conftest import ROOT, wait_for
from tests.integration.cli.purchases import MAPPING, write_purchases
from tests.suite import Suite

ROWS = 50_000


def _command(suite: Suite, key: str, argv: tuple[str, ...], key_flag: str = "--api-key") -> list[str]:
    return [sys.executable, "-c", "from tailor_cli.cli import main; main()", *argv,
            "--gateway", f"127.0.0.1:{suite.ports['gateway']}", key_flag, key]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'protos'}", TAILOR_LOG_LEVEL="WARNING")


async def _tailor(suite: Suite, md, *argv: str, key_flag: str = "--api-key", timeout: float = 120
                  ) -> subprocess.CompletedProcess:
    key = dict(md)["authorization"].removeprefix("Bearer ") if isinstance(md, tuple) else md
    return await asyncio.to_thread(subprocess.run, _command(suite, key, argv, key_flag), cwd=ROOT, env=_env(),
                                   capture_output=True, text=True, timeout=timeout)


async def _inbox_count(dsn: str, tenant: str, bulk: bool | None = None) -> int:
    """The tenant's inbox rows (of one lane when bulk is given)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM gateway.inbox WHERE tenant_id = $1 "
                                   "AND bulk IS NOT DISTINCT FROM coalesce($2, bulk)", tenant, bulk)
    finally:
        await conn.close()


async def test_an_interrupted_import_of_50k_rows_resumes_reports_each_bad_row_once_and_stores_the_rest(
        suite, tmp_path):
    tenant, md = await suite.new_tenant(("ingest",))
    path = tmp_path / "purchases.csv"
    bad = write_purchases(path, ROWS)
    checkpoint = tmp_path / "purchases.csv.checkpoint.json"

    # First run, killed once a fifth of the rows are checkpointed.
    proc = await asyncio.to_thread(subprocess.Popen, _command(suite, dict(md)["authorization"][7:],
                                                              ("import", "events", "-f", str(path), *MAPPING)),
                                   cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    async def far_enough():
        if proc.poll() is not None:
            return True
        return checkpoint.exists() and json.loads(checkpoint.read_text())["rows_done"] >= ROWS // 5

    assert await wait_for(far_enough, timeout=60)
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    done_before = json.loads(checkpoint.read_text())["rows_done"]
    assert ROWS // 5 <= done_before < ROWS, "the first run was not interrupted half-way"

    second = await _tailor(suite, md, "import", "events", "-f", str(path), *MAPPING, "--quiet")
    assert second.returncode == 2, second.stderr
    assert f"(resumed after row {done_before})" in second.stdout
    # Totals add up over both runs: every good row acknowledged (rows the killed run stored after its last saved
    # checkpoint come back as duplicates), every bad one rejected once.
    counts = _counts(second.stdout)
    assert counts["stored"] + counts["duplicate"] == ROWS - len(bad) and counts["rejected"] == len(bad), counts
    assert await _inbox_count(suite.dsn, tenant) == ROWS - len(bad)
    # An import is a backfill: every row went in the bulk lane.
    assert await _inbox_count(suite.dsn, tenant, bulk=True) == ROWS - len(bad)

    with (tmp_path / "purchases.csv.rejected.csv").open(newline="") as f:
        reported = list(csv.DictReader(f))
    assert sorted(int(r["row"]) for r in reported) == sorted(bad), "each bad row is reported exactly once"
    assert {int(r["row"]): r["column"] for r in reported} == bad
    by_field = {r["field"] for r in reported}
    # The contract's violations found before sending and the gateway's own, both mapped back to columns.
    assert {"event_time", "line_items"} <= by_field

    third = await _tailor(suite, md, "import", "events", "-f", str(path), *MAPPING, "--quiet")
    assert "(resumed after row 50000)" in third.stdout, third.stdout + third.stderr
    assert await _inbox_count(suite.dsn, tenant) == ROWS - len(bad)


async def test_individuals_objects_and_items_imported_from_csv_show_in_profiles_and_recommendations(suite, tmp_path):
    tenant, md = await suite.new_tenant()
    people = tmp_path / "people.csv"
    people.write_text("identity.customer_id,identity.email,attribute.first_name,attribute.age:number\n"
                      "p1,ann@example.com,Ann,41\n"
                      "p2,bob@example.com,Bob,thirty\n"
                      "p3,cy@example.com,Cy,29\n")
    imported = await _tailor(suite, md, "import", "individuals", "-f", str(people), "--quiet")
    assert imported.returncode == 2 and "stored 2, duplicate 0, rejected 1" in imported.stdout, imported.stderr
    assert (tmp_path / "people.csv.rejected.csv").read_text().splitlines()[1] == \
        "2,attribute.age:number,,'thirty' is not a number"

    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,customer,total,status\nA-1,p1,120.5,shipped\nA-2,p1,80,open\n")
    objects = await _tailor(suite, md, "import", "objects", "-f", str(orders), "--object-type", "order",
                            "--map", "object_id=order_id", "--map", "identity.customer_id=customer",
                            "--map", "attribute.total:number=total", "--map", "attribute.status=status", "--quiet")
    assert objects.returncode == 0 and "stored 2" in objects.stdout, objects.stderr

    catalog = tmp_path / "items.csv"
    catalog.write_text("sku,title,cat,price,in_stock\nboots,Boots,shoes,80,true\nclogs,Clogs,shoes,40,yes\n"
                       "cap,Cap,hats,15,no\nbad,Bad,hats,free,true\n")
    items = await _tailor(suite, md, "import", "items", "-f", str(catalog), "--map", "item_id=sku",
                          "--map", "name=title", "--map", "attribute.category=cat", "--map", "attribute.price:number=price",
                          "--map", "attribute.in_stock:bool=in_stock", "--quiet")
    assert items.returncode == 2 and "upserted 3, rejected 1" in items.stdout, items.stdout + items.stderr
    listed = await suite.profile_admin.GetItems(profile_pb.GetItemsRequest(item_ids=["boots", "cap", "bad"]),
                                                metadata=md)
    assert {i.item_id: (i.name, dict(i.attributes)) for i in listed.items} == {
        "boots": ("Boots", {"category": "shoes", "price": 80.0, "in_stock": True}),
        "cap": ("Cap", {"category": "hats", "price": 15.0, "in_stock": False})}

    async def profile():
        try:
            reply = await suite.gateway.GetProfile(pb.GetProfileRequest(
                individual_id=common_pb2.Identity(type="email", value="ann@example.com")), metadata=md)
        except grpc.aio.AioRpcError:  # NOT_FOUND until the pipeline has processed the import
            return None
        return reply if len(reply.profile_objects) == 2 else None

    reply = await wait_for(profile)
    assert reply is not None, "the imported rows never reached the profile"
    assert reply.attributes["first_name"] == "Ann" and reply.attributes["age"] == 41
    assert sorted(o.object_id for o in reply.profile_objects) == ["A-1", "A-2"]

    shown = await _tailor(suite, md, "recommend", "--item", "boots", "--attribute", "name", "--test-mode")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("similar_attributes for anonymous") and "clogs" in lines[1] and "name=Clogs" in lines[1]


async def test_ingest_streams_a_jsonl_file_and_reports_bad_lines_by_number(suite, tmp_path):
    tenant, md = await suite.new_tenant(("ingest",))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    lines = []
    for n in range(1, 1201):
        event = {"messageId": f"e{n}", "type": "EVENT_TYPE_PAGE_VIEW", "eventTime": now,
                 "identities": [{"type": "device_id", "value": f"d{n % 50}"}]}
        if n == 700:    # rejected by the gateway: a type the tenant never declared
            event["identities"][0]["type"] = "loyalty_card"
        if n == 1100:   # rejected by the gateway: over the contract's 512 characters
            event["identities"][0]["value"] = "d" * 600
        lines.append(json.dumps(event))
    lines[449] = "{not json"
    lines.append(lines[0])  # a duplicate
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    result = await _tailor(suite, md, "ingest", "-f", str(path), "--batch-size", "100")
    assert result.returncode == 2, result.stderr
    counts = _counts(result.stdout)
    # Messages go with skip_invalid: the gateway stores the valid events of each and answers the two bad ones, the
    # line that is not JSON never leaves, and one stream carries the whole file.
    assert counts == {"stored": 1197, "duplicate": 1, "rejected": 3}, result.stdout
    assert "line 450: not a JSON Event" in result.stderr
    assert "line 700: identities[0].type: unknown identity type" in result.stderr
    assert "line 1100: identities[0].value: must be at most 512 characters" in result.stderr
    assert await _inbox_count(suite.dsn, tenant) == await _inbox_count(suite.dsn, tenant, bulk=False) == 1197
    again = _counts((await _tailor(suite, md, "ingest", "-f", str(path), "--quiet")).stdout)
    assert again["stored"] == 0 and again["duplicate"] + again.get("stored or duplicate", 0) == 1198
    assert await _inbox_count(suite.dsn, tenant) == 1197
    # --bulk sends a file as a backfill.
    late = tmp_path / "late.jsonl"
    late.write_text(lines[1].replace('"e2"', '"late-1"') + "\n" + lines[2].replace('"e3"', '"late-2"') + "\n")
    backfill = await _tailor(suite, md, "ingest", "-f", str(late), "--bulk", "--quiet")
    assert _counts(backfill.stdout)["stored"] == 2, backfill.stdout + backfill.stderr
    assert await _inbox_count(suite.dsn, tenant, bulk=True) == 2


def _counts(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(stored or duplicate|stored|duplicate|rejected) (\d+)",
                                                             text)}


async def test_train_shows_progress_and_the_model_version(suite):
    _, md = await suite.new_tenant()
    events = [common_pb2.Event(message_id=f"t{n}", type=common_pb2.EVENT_TYPE_PURCHASE,
                               event_time=timestamp_pb2.Timestamp(seconds=int(time.time()) - 60),
                               identities=[common_pb2.Identity(type="customer_id", value=f"u{n % 12}")],
                               line_items=[common_pb2.LineItem(item_id=f"i{(n * 7) % 9}", quantity=1, unit_price=3)])
              for n in range(120)]
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=events), metadata=md)
    stub = rec_grpc.RecommenderServiceStub(suite.channel)
    await stub.PutRecommender(rec_pb.PutRecommenderRequest(config=rec_pb.RecommenderConfig(
        name="for_you", strategy="learned", parameters=rec_pb.StrategyParameters(
            objective=rec_pb.OBJECTIVE_MAXIMIZE_PURCHASES, factors=4, iterations=5))), metadata=md)

    async def interactions():
        reply = await suite.gateway.GetRecommendations(pb.GetRecommendationsRequest(
            count=9, execution_flags=[pb.EXECUTION_FLAG_TEST_MODE]), metadata=md)
        return len(reply.items) == 9

    assert await wait_for(interactions)
    trained = await _tailor(suite, md, "train", "for_you")
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.strip().startswith("for_you: model version 1 trained on")
    assert "100%" in trained.stderr and "done" in trained.stderr


async def test_the_operator_creates_lists_and_sets_quotas_and_a_tenant_key_cannot(suite, tmp_path):
    operator = await write_operator_key(suite.dsn, tmp_path / "operator_key")
    assert (tmp_path / "operator_key").stat().st_mode & 0o777 == 0o600
    assert await write_operator_key(suite.dsn, tmp_path / "operator_key") == operator  # reused while it works

    created = await _tailor(suite, operator, "tenant", "create", "acme-cli", "--scopes", "ingest,decide",
                            key_flag="--operator-key")
    assert created.returncode == 0 and "tenant acme-cli created" in created.stdout, created.stderr
    acme_key = created.stdout.strip().splitlines()[-1]
    assert acme_key.startswith("tlr_")
    quota = await _tailor(suite, operator, "tenant", "quota", "acme-cli", "--credits", "5000", "--rate", "20",
                          key_flag="--operator-key")
    assert quota.stdout.strip() == "tenant acme-cli: 5000 decision credits a month, 20 requests/s", quota.stderr
    listed = await _tailor(suite, operator, "tenant", "list", "--json", key_flag="--operator-key")
    tenants = {t["tenant_id"]: t for t in json.loads(listed.stdout)}
    assert "_operator" not in tenants
    assert tenants["acme-cli"]["decision_credit_limit"] == "5000" and tenants["acme-cli"]["active_key_count"] == 1

    refused = await _tailor(suite, acme_key, "tenant", "list", key_flag="--operator-key")
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
    unknown = await _tailor(suite, operator, "tenant", "quota", "nobody-here", "--credits", "1",
                            key_flag="--operator-key")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


async def test_rotate_key_replaces_a_key_with_the_same_scopes_and_revoke_key_ends_it(suite):
    _, admin = await suite.new_tenant(("ingest", "decide", "admin"))
    extra = await suite.gateway.CreateApiKey(pb.CreateApiKeyRequest(display_name="pos", scopes=[pb.SCOPE_INGEST]),
                                             metadata=admin)
    rotated = await _tailor(suite, admin, "tenant", "rotate-key", extra.api_key.key_id)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.strip().splitlines()[-1]
    keys = {k.key_id: k for k in (await suite.gateway.ListApiKeys(pb.ListApiKeysRequest(), metadata=admin)).api_keys}
    assert keys[extra.api_key.key_id].HasField("revoke_time")
    new_id = new_secret.split("_")[1]
    assert list(keys[new_id].scopes) == [pb.SCOPE_INGEST] and keys[new_id].display_name == "pos"

    revoked = await _tailor(suite, admin, "tenant", "revoke-key", new_id)
    assert revoked.returncode == 0 and f"key {new_id} revoked" in revoked.stdout, revoked.stderr
    again = await _tailor(suite, admin, "tenant", "revoke-key", "0000000000000000")
    assert again.returncode == 1 and "NOT_FOUND" in again.stderr


async def test_batch_run_progress_advances_in_steps_as_pages_commit(suite):
    from tests.e2e.test_batch_and_records_e2e import _shoppers

    _, md = await suite.new_tenant()
    await _shoppers(suite, md, 1000)
    result = await _tailor(suite, md, "batch", "run", "--segment", "buyers", "--point", "banner")
    assert result.returncode == 0, result.stderr
    seen = {int(m.group(1)) for m in re.finditer(r"(\d+)/1000", result.stdout)}
    # Pages of 50 members: the bar shows at least one step between start and end (how many depends on how fast
    # the machine decides a page against the watch's polling; on a quiet machine the job takes well under a second).
    assert len(seen - {0, 1000}) >= 1, result.stdout
    assert "done: 1000 rows" in result.stdout
