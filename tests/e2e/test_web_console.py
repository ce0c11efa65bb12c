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
from selenium.webdriver.support.ui import WebDriverWait

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from tailor_cli import demo
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
