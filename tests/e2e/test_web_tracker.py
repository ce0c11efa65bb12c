"""The web tracker in a real browser: the example page, served by the gateway, sends events with a browser key
and shows the decision for its point; impressions and clicks carry the personalization id."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import struct_pb2
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from personalization.common.v1 import common_pb2
from personalization.decision.v1 import decision_service_pb2 as decision_pb
from personalization.gateway.v1 import gateway_service_pb2 as pb
from tests.e2e.browser import chromium, output_folder


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


async def _wait(driver, condition, timeout: float = 20.0):
    """WebDriver's wait, off the event loop (the gateway serves the page from this process)."""
    return await asyncio.to_thread(lambda: WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition))


async def test_the_example_page_sends_events_then_shows_a_decision(suite, browser):
    _, md = await suite.new_tenant()
    origin = f"http://127.0.0.1:{suite.ports['http']}"
    await suite.decision_admin.UpsertPoint(decision_pb.UpsertPointRequest(point=decision_pb.Point(
        name="home_banner", type=decision_pb.POINT_TYPE_MANUAL_CONTENT, template=decision_pb.ResponseTemplate(
            fields=[decision_pb.TemplateField(name="headline", type=decision_pb.FIELD_TYPE_STRING),
                    decision_pb.TemplateField(name="body", type=decision_pb.FIELD_TYPE_STRING)]))), metadata=md)
    content = struct_pb2.Struct()
    content.update({"headline": "Hello from Tailor", "body": "Free shipping today"})
    await suite.decision_admin.UpsertDecision(decision_pb.UpsertDecisionRequest(decision=decision_pb.Decision(
        point_name="home_banner", name="hello", fallback=True, content=content)), metadata=md)
    await suite.gateway.UpdateBrowserSettings(pb.UpdateBrowserSettingsRequest(
        settings=pb.BrowserSettings(allowed_origins=[origin])), metadata=md)
    key = (await suite.gateway.CreateApiKey(pb.CreateApiKeyRequest(
        display_name="example", scopes=[pb.SCOPE_INGEST, pb.SCOPE_DECIDE], browser=True), metadata=md)).secret

    await asyncio.to_thread(browser.get, f"{origin}/example/?key={key}&point=home_banner")
    banner = browser.find_element(By.ID, "banner")
    assert "Welcome to the shop" in banner.text  # no consent yet: nothing is sent, the default stays
    await asyncio.sleep(0.5)
    assert browser.execute_script("return localStorage.getItem('tailor_anonymous_id')") is None
    assert browser.find_element(By.ID, "sent").text == "0"

    browser.find_element(By.ID, "accept").click()
    await _wait(browser, lambda d: "Hello from Tailor" in d.find_element(By.ID, "banner").text)
    assert "Free shipping today" in banner.text
    personalization_id = banner.get_attribute("data-tailor-personalization-id")
    assert personalization_id
    anonymous_id = browser.execute_script("return localStorage.getItem('tailor_anonymous_id')")

    product = browser.find_elements(By.CSS_SELECTOR, ".product")[0]
    product.find_element(By.CSS_SELECTOR, ".view").click()
    product.find_element(By.CSS_SELECTOR, ".cart").click()
    product.find_element(By.CSS_SELECTOR, ".buy").click()
    banner.click()
    # consent, page view, impression, product view, add-to-cart, purchase, click
    await _wait(browser, lambda d: int(d.find_element(By.ID, "sent").text) >= 7)
    browser.save_screenshot(str(output_folder("web_tracker") / "example.png"))

    async def profile_events():
        try:
            reply = await suite.gateway.GetProfile(pb.GetProfileRequest(
                individual_id=common_pb2.Identity(type="device_id", value=anonymous_id), event_limit=20), metadata=md)
        except Exception:  # noqa: BLE001 - not processed yet
            return None
        return reply.events if len(reply.events) >= 7 else None

    events = None
    for _ in range(100):
        events = await profile_events()
        if events:
            break
        await asyncio.sleep(0.2)
    assert events, "the page's events never reached the profile"
    kinds = {(e.type, e.name) for e in events}
    assert {(common_pb2.EVENT_TYPE_PAGE_VIEW, ""), (common_pb2.EVENT_TYPE_PRODUCT_VIEW, ""),
            (common_pb2.EVENT_TYPE_ADD_TO_CART, ""), (common_pb2.EVENT_TYPE_PURCHASE, "")} <= kinds
    marked = {e.name: e.properties.fields["personalization_id"].string_value for e in events
              if e.name in ("impression", "click")}
    assert marked == {"impression": personalization_id, "click": personalization_id}
