"""The console in a real browser, on a seeded tenant: sign-in with an admin key, every page loads with the tenant's
data (a screenshot of each under tests/output/web_console/), a profile is found by email, and the experiment's
chance-to-win chart shows both cohorts."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from personalization.profile_graph.v1 import profile_graph_service_pb2 as profile_pb
from tailor_cli import demo
from tests.conftest import wait_for
from tests.e2e.browser import chromium, output_folder

CONSOLE_PAGES = ["/console/", "/console/profiles?identity=email:ada@example.com", "/console/segments",
                 "/console/experiments", "/console/decisions", "/console/configuration"]


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


@pytest.fixture(scope="module")
async def seeded(suite):
    """A tenant with the demo's configuration, a big spender, visitors served by a running experiment."""
    _, md = await suite.new_tenant()
    key = md[0][1].split(" ", 1)[1]
    await demo.apply_config(f"127.0.0.1:{suite.ports['gateway']}", key)
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        common_pb2.Event(message_id="c-1", type=common_pb2.EVENT_TYPE_LOGIN, event_time=_now(), source="web",
                         identities=[common_pb2.Identity(type="device_id", value="dev-ada"),
                                     common_pb2.Identity(type="email", value="ada@example.com")]),
        common_pb2.Event(message_id="c-2", type=common_pb2.EVENT_TYPE_PURCHASE, event_time=_now(), source="web",
                         identities=[common_pb2.Identity(type="email", value="ada@example.com")],
                         line_items=[common_pb2.LineItem(item_id="22423", quantity=80, unit_price=12.75)]),
    ] + [common_pb2.Event(message_id=f"v-{i}", type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=_now(),
                          identities=[common_pb2.Identity(type="device_id", value=f"visitor-{i}")])
         for i in range(12)]), metadata=md)
    decisions = await suite.decision_admin.ListDecisions(decision_pb.ListDecisionsRequest(point_name="home_banner"),
                                                         metadata=md)
    ids = {d.name: d.decision_id for d in decisions.decisions}
    await suite.decision_admin.UpsertExperiment(decision_pb.UpsertExperimentRequest(experiment=decision_pb.Experiment(
        name="banner_test", point_name="home_banner", primary_metric=decision_pb.METRIC_CONVERSION,
        cohorts=[decision_pb.Cohort(cohort_id="control", weight_bps=5000, decision_id=ids["welcome"]),
                 decision_pb.Cohort(cohort_id="vip_for_all", weight_bps=5000, decision_id=ids["vip_offer"])],
        min_participants=300, chance_to_win_threshold=95.0,
        winner_selection=decision_pb.WINNER_SELECTION_MANUAL)), metadata=md)
    await suite.decision_admin.StartExperiment(decision_pb.StartExperimentRequest(name="banner_test"), metadata=md)
    deadline = time.monotonic() + 30
    while True:  # the pipeline has made Ada a big spender
        try:
            profile = await suite.gateway.GetProfile(pb.GetProfileRequest(
                individual_id=common_pb2.Identity(type="email", value="ada@example.com")), metadata=md)
            if "big_spenders" in profile.segments:
                break
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline, "the seeded events were never processed"
        await asyncio.sleep(0.1)
    for i in range(12):
        await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
            individual_id=common_pb2.Identity(type="device_id", value=f"visitor-{i}"),
            personalization_points=[pb.PointRequest(name="home_banner")]), metadata=md)
    return key, profile.unified_individual_id


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def _wait(driver, condition, timeout: float = 30.0):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


async def test_each_console_page_loads_with_the_tenants_data(suite, seeded, browser):
    key, unified_id = seeded
    base = f"http://127.0.0.1:{suite.ports['http']}"
    folder = output_folder("web_console")

    def sign_in_and_visit() -> dict[str, str]:
        browser.get(base + "/console/")
        _wait(browser, lambda d: d.current_url.endswith("/console/login"))
        browser.find_element(By.ID, "key").send_keys(key)
        browser.find_element(By.ID, "sign-in").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "pending"))
        texts = {}
        for path in CONSOLE_PAGES:
            browser.get(base + path)
            _wait(browser, lambda d: d.find_elements(By.TAG_NAME, "h1"))
            name = path.split("?")[0].rstrip("/").rsplit("/", 1)[-1].replace("console", "pipeline")
            browser.save_screenshot(str(folder / f"{name}.png"))
            texts[name] = browser.find_element(By.TAG_NAME, "main").text
        return texts

    texts = await asyncio.to_thread(sign_in_and_visit)
    assert int(texts["pipeline"].split("received, last hour\n")[1].split("\n")[0]) >= 14
    assert unified_id in texts["profiles"] and "ada@example.com" in texts["profiles"]
    assert "big_spenders" in texts["profiles"] and "PURCHASE" in texts["profiles"]
    assert "big_spenders" in texts["segments"] and "spend_30d" in texts["segments"]
    assert "banner_test" in texts["experiments"] and "vip_for_all" in texts["experiments"]
    assert "home_banner" in texts["decisions"] and "welcome" in texts["decisions"]
    assert "vip_offer" in texts["configuration"] and "top_sellers" in texts["configuration"]
    for name in ("pipeline", "profiles", "segments", "experiments", "decisions", "configuration"):
        assert (folder / f"{name}.png").stat().st_size > 10_000


async def test_a_profile_search_finds_a_person_by_email(suite, seeded, browser):
    key, unified_id = seeded
    base = f"http://127.0.0.1:{suite.ports['http']}"

    def search() -> str:
        browser.get(base + "/console/profiles")
        if browser.current_url.endswith("/login"):
            browser.find_element(By.ID, "key").send_keys(key)
            browser.find_element(By.ID, "sign-in").click()
            browser.get(base + "/console/profiles")
        box = browser.find_element(By.ID, "identity")
        box.clear()
        box.send_keys("email:ada@example.com")
        browser.find_element(By.ID, "search").click()
        return _wait(browser, lambda d: d.find_elements(By.ID, "unified-id"))[0].text

    assert await asyncio.to_thread(search) == unified_id


async def test_the_experiment_chart_shows_both_cohorts(suite, seeded, browser):
    key, _ = seeded
    base = f"http://127.0.0.1:{suite.ports['http']}"

    def chart_text() -> str:
        browser.get(base + "/console/experiments?name=banner_test")
        if browser.current_url.endswith("/login"):
            browser.find_element(By.ID, "key").send_keys(key)
            browser.find_element(By.ID, "sign-in").click()
            browser.get(base + "/console/experiments?name=banner_test")
        chart = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chance-chart svg"))[0]
        return chart.get_attribute("innerHTML")

    svg = await asyncio.to_thread(chart_text)
    assert "control" in svg and "vip_for_all" in svg
    assert svg.count("<path") >= 2  # a bar per cohort (and the axes)


async def test_the_console_refuses_a_key_without_admin_scope(suite):
    _, md = await suite.new_tenant(scopes=("ingest",))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{suite.ports['http']}") as http:
        assert (await http.get("/console/", follow_redirects=False)).headers["location"] == "/console/login"
        refused = await http.post("/console/login", data={"key": md[0][1].split(" ", 1)[1]})
        assert refused.status_code == 401 and "an admin key is needed" in refused.text
        with_header = await http.get("/console/", headers={"authorization": md[0][1]})
        assert with_header.status_code == 403


def _sign_in(browser, base: str, key: str, landing_id: str) -> None:
    browser.get(base + "/console/login")
    browser.delete_all_cookies()  # whoever signed in before
    browser.get(base + "/console/login")
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "sign-in").click()
    _wait(browser, lambda d: d.find_elements(By.ID, landing_id))


async def test_the_operator_sees_every_tenants_pipeline_and_picks_one(suite, browser, tmp_path):
    from services.gateway.admin import write_operator_key

    operator = await write_operator_key(suite.dsn, tmp_path / "operator_key")
    busy, md = await suite.new_tenant()
    await suite.gateway.IngestEvents(pb.IngestEventsRequest(events=[
        common_pb2.Event(message_id=f"op-{i}", type=common_pb2.EVENT_TYPE_PAGE_VIEW, event_time=_now(),
                         identities=[common_pb2.Identity(type="device_id", value=f"op-{i}")]) for i in range(7)]),
        metadata=md)
    for _ in range(21):  # more tenants than one page of the operator's list
        await suite.new_tenant()
    base = f"http://127.0.0.1:{suite.ports['http']}"
    folder = output_folder("web_console")

    def browse() -> tuple[int, str, str]:
        _sign_in(browser, base, operator, "tenants")
        browser.save_screenshot(str(folder / "operator_tenants.png"))
        pages = 1
        while not browser.find_elements(By.CSS_SELECTOR, f"#tenant option[value='{busy}']"):
            browser.find_element(By.ID, "tenants-next").click()  # the tenant is on a later page
            _wait(browser, lambda d: d.find_elements(By.ID, "tenants-first"))
            pages += 1
        rows = browser.find_element(By.ID, "tenants").text
        Select(browser.find_element(By.ID, "tenant")).select_by_value(busy)
        browser.find_element(By.ID, "pick").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "tenant-id"))
        browser.save_screenshot(str(folder / "operator_tenant_pipeline.png"))
        text = browser.find_element(By.TAG_NAME, "main").text
        browser.get(base + "/console/segments")  # tenant pages are not the operator's: back to all tenants
        _wait(browser, lambda d: d.find_elements(By.ID, "tenants"))
        return pages, rows, text

    pages, rows, text = await asyncio.to_thread(browse)
    first_page = await suite.gateway.ListTenants(pb.ListTenantsRequest(page_size=20),
                                                 metadata=(("authorization", f"Bearer {operator}"),))
    assert first_page.next_page_token and (pages > 1) == (busy not in {t.tenant_id for t in first_page.tenants})
    assert busy in rows
    assert busy in text.split("\n")[0]
    assert int(text.split("received, last hour\n")[1].split("\n")[0]) == 7
    assert "Profiles" not in browser.find_element(By.TAG_NAME, "header").text


async def test_long_lists_go_page_by_page(suite, browser):
    _, md = await suite.new_tenant()
    key = md[0][1].split(" ", 1)[1]
    await demo.apply_config(f"127.0.0.1:{suite.ports['gateway']}", key)
    for i in range(55):  # one page of the decision log (50) and a bit
        await suite.gateway.GetDecisions(pb.GetDecisionsRequest(
            individual_id=common_pb2.Identity(type="device_id", value=f"pager-{i}"),
            personalization_points=[pb.PointRequest(name="home_banner")]), metadata=md)
    listed = await suite.profile_admin.ListSegments(profile_pb.ListSegmentsRequest(), metadata=md)
    for i in range(26 - len(listed.segments)):  # more segments than a page (25)
        await suite.profile_admin.UpsertSegment(profile_pb.UpsertSegmentRequest(segment=profile_pb.Segment(
            name=f"spenders_{i:02d}", rule=f"insights.spend_30d >= {i + 1}.0")), metadata=md)

    async def logged() -> bool:
        log = await suite.decision_admin.ListDecisionLog(decision_pb.ListDecisionLogRequest(page_size=100),
                                                        metadata=md)
        return len(log.entries) >= 55

    assert await wait_for(logged)
    base = f"http://127.0.0.1:{suite.ports['http']}"
    folder = output_folder("web_console")

    def browse() -> dict[str, object]:
        _sign_in(browser, base, key, "pending")
        seen: dict[str, object] = {}
        browser.get(base + "/console/decisions")
        rows = lambda d: d.find_elements(By.CSS_SELECTOR, "#log tr td:first-child")  # noqa: E731 - a probe
        seen["log_first"] = len(_wait(browser, rows))
        browser.find_element(By.ID, "log-next").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "log-first"))
        browser.save_screenshot(str(folder / "decisions_page_2.png"))
        seen["log_second"] = len(rows(browser))
        seen["log_more"] = bool(browser.find_elements(By.ID, "log-next"))
        browser.get(base + "/console/segments")
        names = lambda d: [a.text for a in d.find_elements(By.CSS_SELECTOR, "#segments td:first-child a")]  # noqa: E731
        seen["segments_first"] = names(browser)
        browser.find_element(By.ID, "segments-next").click()
        _wait(browser, lambda d: d.find_elements(By.ID, "segments-first"))
        browser.save_screenshot(str(folder / "segments_page_2.png"))
        seen["segments_second"] = names(browser)
        return seen

    seen = await asyncio.to_thread(browse)
    assert (seen["log_first"], seen["log_second"], seen["log_more"]) == (50, 5, False)
    first, second = seen["segments_first"], seen["segments_second"]
    assert len(first) == 25 and len(second) >= 1 and not set(first) & set(second)
    assert "spenders_00" in first + second and "big_spenders" in first + second


async def test_a_segments_members_link_to_their_profiles(suite, seeded, browser):
    key, unified_id = seeded
    base = f"http://127.0.0.1:{suite.ports['http']}"

    def browse() -> str:
        _sign_in(browser, base, key, "pending")
        browser.get(base + "/console/segments")
        _wait(browser, lambda d: d.find_elements(By.LINK_TEXT, "big_spenders"))[0].click()
        member = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#members a"))[0]
        member.click()
        return _wait(browser, lambda d: d.find_elements(By.ID, "unified-id"))[0].text

    assert await asyncio.to_thread(browse) == unified_id
