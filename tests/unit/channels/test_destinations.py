"""Webhook URL policy, signing, retries and the file sink, without a network or a database."""

from __future__ import annotations

import csv
import hashlib
import hmac
import ipaddress
import json

import httpx
import pytest

from services.gateway.destinations import (
    ALLOWED_NETWORKS_SETTING,
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryError,
    FileSink,
    UrlPolicy,
    WebhookSender,
    address_problem,
    check_url,
    directory_problem,
    parse_networks,
    signature,
    signed_headers,
    system_resolve,
    verify,
)
from shared.settings import SettingsError

PUBLIC = "93.184.216.34"
PUBLIC_ONLY = UrlPolicy()


def resolver(*addresses: str):
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolve


async def no_dns(host: str, port: int) -> list[str]:
    raise OSError("Name or service not known")


def policy(*networks: str, resolve=None) -> UrlPolicy:
    return UrlPolicy(parse_networks(",".join(networks)), resolve or system_resolve)


# URL policy.

async def test_an_https_url_on_a_public_address_is_allowed():
    assert await check_url(f"https://{PUBLIC}/hooks/tailor") is None
    assert await check_url("https://hooks.example.com:8443/x", policy(resolve=resolver(PUBLIC, "2606:2800:220:1::1"))) is None


@pytest.mark.parametrize("url, label", [
    ("https://127.0.0.1/x", "loopback"),
    ("https://127.8.9.10/x", "loopback"),
    ("https://[::1]/x", "loopback"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/x", "link-local"),
    ("https://10.1.2.3/x", "private"),
    ("https://172.16.0.1/x", "private"),
    ("https://192.168.1.1/x", "private"),
    ("https://[fc00::1]/x", "unique-local"),
    ("https://[fd00::1]/x", "unique-local"),
    ("https://0.0.0.0/x", "unspecified"),
    ("https://[::]/x", "unspecified"),
    ("https://[::ffff:127.0.0.1]/x", "loopback"),
    ("https://[::ffff:7f00:1]/x", "loopback"),
    ("https://[::ffff:10.0.0.1]/x", "private"),
    ("https://[2002:a00:1::]/x", "private"),   # 6to4 wrapping 10.0.0.1
    ("https://[64:ff9b::a9fe:a9fe]/x", "link-local"),   # NAT64 wrapping 169.254.169.254
    ("https://100.64.0.1/x", "shared, CGNAT"),
    ("https://224.0.0.1/x", "multicast"),
    ("https://[ff02::1]/x", "multicast"),
    ("https://240.0.0.1/x", "reserved"),
    ("https://198.18.0.1/x", "private"),
])
async def test_internal_addresses_of_every_kind_are_refused_naming_the_kind(url, label):
    problem = await check_url(url)
    assert problem is not None and problem.startswith("points to a non-public address ") and f"({label})" in problem


@pytest.mark.parametrize("host, meant", [("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
                                         ("0x7f000001", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
                                         ("017700000001", "127.0.0.1")])
async def test_numeric_hosts_in_non_standard_spellings_are_refused(host, meant):
    problem = await check_url(f"https://{host}/x", policy("0.0.0.0/0"))
    assert problem == f"host {host} is a non-standard spelling of {meant}; write addresses in dotted form"


async def test_a_dns_name_is_refused_when_any_of_its_addresses_is_private_without_naming_the_address():
    problem = await check_url("https://hooks.example.com/x", policy(resolve=resolver(PUBLIC, "10.0.0.5")))
    assert problem.startswith("points to a non-public address (private; host hooks.example.com)")
    assert "10.0.0.5" not in problem


async def test_a_dns_name_resolving_to_an_ipv6_loopback_is_refused():
    problem = await check_url("https://sneaky.example.com/x", policy(resolve=resolver("::1")))
    assert problem is not None and "loopback" in problem


async def test_localhost_is_refused_through_the_real_resolver():
    problem = await check_url("https://localhost:8443/x")
    assert problem is not None and "(loopback; host localhost)" in problem


async def test_a_host_that_does_not_resolve_is_refused():
    problem = await check_url("https://nowhere.invalid/x", policy(resolve=no_dns))
    assert problem == "host nowhere.invalid does not resolve"


@pytest.mark.parametrize("url, expected", [
    (f"http://{PUBLIC}/x", "must use https"),
    (f"ftp://{PUBLIC}/x", "must use https"),
    ("https:///x", "must name a host"),
    (f"https://user:pw@{PUBLIC}/x", "must not carry credentials"),
    (f"https://user@{PUBLIC}/x", "must not carry credentials"),
    ("https://[::1/x", "is not a valid URL"),
    (f"https://{PUBLIC}:70000/x", "port out of range"),
])
async def test_malformed_or_plain_http_urls_are_refused(url, expected):
    problem = await check_url(url)
    assert problem is not None and expected in problem


async def test_the_operators_networks_open_private_addresses_and_plain_http_there_only():
    local = policy("127.0.0.0/8", "fd00::/8")
    assert await check_url("http://127.0.0.1:8080/hook", local) is None
    assert await check_url("https://[fd00::7]:8443/hook", local) is None
    assert await check_url("https://[::ffff:127.0.0.1]/hook", local) is None
    assert "address ::1 (loopback)" in await check_url("http://[::1]:8080/hook", local)
    assert "address 10.0.0.1 (private)" in await check_url("http://10.0.0.1/hook", local)
    assert "must use https" in await check_url(f"http://{PUBLIC}/hook", local)
    assert "must use https" in await check_url("ftp://127.0.0.1/x", local)


def test_a_malformed_network_setting_names_the_variable():
    with pytest.raises(SettingsError) as info:
        parse_networks("127.0.0.0/8, banana")
    assert info.value.name == ALLOWED_NETWORKS_SETTING and "'banana'" in str(info.value)
    assert parse_networks(" 10.0.0.0/8 ,, ::1/128") == (ipaddress.ip_network("10.0.0.0/8"),
                                                       ipaddress.ip_network("::1/128"))


def test_a_public_address_has_no_problem():
    assert address_problem(PUBLIC) is None
    assert address_problem("2606:2800:220:1::1") is None


# Signing.

def test_the_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = b'{"rows":[]}'
    expected = hmac.new(b"s3cret-s3cret-s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("s3cret-s3cret-s3cret", "1700000000", body) == expected


def test_signed_headers_verify_and_a_tampered_body_does_not():
    body = b'{"rows":[{"a":1}]}'
    headers = signed_headers("k" * 20, "dlv_1", body, now=1_700_000_123.9)
    assert headers[DELIVERY_ID_HEADER] == "dlv_1" and headers[TIMESTAMP_HEADER] == "1700000123"
    assert verify("k" * 20, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify("k" * 20, headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER])
    assert not verify("other-secret-here", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])


# Sending with retries.

PUBLIC_DNS = policy(resolve=resolver(PUBLIC))


def sender_with(handler, attempts=4) -> WebhookSender:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return WebhookSender(client, attempts=attempts, base_delay=0.0)


async def test_a_5xx_is_retried_with_the_same_delivery_id_until_it_succeeds():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503 if len(seen) < 3 else 200)

    sender = sender_with(handler)
    await sender.send("https://hooks.example.com/x", "k" * 20, "dlv_9", b'{"rows":[]}', PUBLIC_DNS)
    assert len(seen) == 3
    assert {r.headers[DELIVERY_ID_HEADER] for r in seen} == {"dlv_9"}
    assert all(verify("k" * 20, r.headers[TIMESTAMP_HEADER], r.content, r.headers[SIGNATURE_HEADER]) for r in seen)
    assert seen[0].method == "POST" and seen[0].headers["content-type"] == "application/json"


async def test_the_call_goes_to_the_vetted_address_with_the_original_host_and_tls_name():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    await sender_with(handler).send("https://Hooks.Example.com:8443/in?x=1", "k" * 20, "d", b"{}", PUBLIC_DNS)
    request = seen[0]
    assert str(request.url) == f"https://{PUBLIC}:8443/in?x=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


async def test_each_attempt_resolves_again_and_a_host_re_pointed_to_a_private_address_is_not_called():
    answers = [[PUBLIC], ["10.0.0.9"]]
    calls = []

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    def handler(request):
        calls.append(request.url.host)
        return httpx.Response(503)

    with pytest.raises(DeliveryError) as info:
        await sender_with(handler).send("https://hooks.example.com/x", "k" * 20, "d", b"{}",
                                        policy(resolve=rebinding))
    assert calls == [PUBLIC] and info.value.permanent and "(private; host hooks.example.com)" in str(info.value)


async def test_a_refused_connection_moves_on_to_the_next_vetted_address():
    calls = []

    def handler(request):
        calls.append(request.url.host)
        if request.url.host == PUBLIC:
            raise httpx.ConnectError("refused")
        return httpx.Response(200)

    await sender_with(handler, attempts=1).send("https://hooks.example.com/x", "k" * 20, "d", b"{}",
                                                policy(resolve=resolver(PUBLIC, "2606:2800:220:1::1")))
    assert calls == [PUBLIC, "2606:2800:220:1::1"]


@pytest.mark.parametrize("status", [408, 429, 500, 502])
async def test_retryable_statuses_end_as_a_transient_failure(status):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(status)

    with pytest.raises(DeliveryError) as info:
        await sender_with(handler, attempts=3).send("https://hooks.example.com/x", "k" * 20, "d", b"{}", PUBLIC_DNS)
    assert not info.value.permanent and len(calls) == 3 and str(info.value).startswith(f"HTTP {status} (")


@pytest.mark.parametrize("status, reason", [(400, "HTTP 400 (Bad Request)"), (401, "HTTP 401 (Unauthorized)"),
                                            (404, "HTTP 404 (Not Found)"), (410, "HTTP 410 (Gone)"),
                                            (301, "HTTP 301 (Moved Permanently); redirects are not followed"),
                                            (499, "HTTP 499 (non-standard status)")])
async def test_other_4xx_and_redirects_are_permanent_failures_with_a_fixed_reason_and_no_body(status, reason):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(status, text="internal secret page", headers={"Location": "http://10.0.0.1/"})

    with pytest.raises(DeliveryError) as info:
        await sender_with(handler).send("https://hooks.example.com/x", "k" * 20, "d", b"{}", PUBLIC_DNS)
    assert info.value.permanent and len(calls) == 1 and str(info.value) == reason


async def test_connection_errors_and_timeouts_are_retried_with_fixed_reasons():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused by 10.1.2.3")
        if len(calls) == 2:
            raise httpx.ReadTimeout("slow")
        return httpx.Response(204)

    await sender_with(handler).send("https://hooks.example.com/x", "k" * 20, "d", b"{}", PUBLIC_DNS)
    assert len(calls) == 3
    with pytest.raises(DeliveryError) as info:
        await sender_with(lambda r: (_ for _ in ()).throw(httpx.ConnectError("x")), attempts=2).send(
            "https://hooks.example.com/x", "k" * 20, "d", b"{}", PUBLIC_DNS)
    assert str(info.value) == "connection failed (ConnectError)" and not info.value.permanent


async def test_a_dns_failure_at_send_time_is_retried_not_permanent():
    calls = []
    with pytest.raises(DeliveryError) as info:
        await sender_with(lambda r: calls.append(1), attempts=2).send(
            "https://hooks.example.com/x", "k" * 20, "d", b"{}", policy(resolve=no_dns))
    assert not info.value.permanent and not calls and "does not resolve" in str(info.value)


async def test_a_url_that_now_resolves_to_a_private_address_is_not_called():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(200)

    with pytest.raises(DeliveryError) as info:
        await sender_with(handler).send("https://hooks.example.com/x", "k" * 20, "d", b"{}",
                                        policy(resolve=resolver("192.168.0.7")))
    assert info.value.permanent and not calls and "private" in str(info.value)


# File sink.

def test_folders_must_be_relative_and_stay_under_the_root():
    assert directory_problem("crm/daily") is None
    assert "relative" in directory_problem("/etc")
    assert "'..'" in directory_problem("a/../../b")
    assert "empty" in directory_problem(" ")
    assert directory_problem("C:/x") is not None


async def test_jsonl_rows_are_appended_one_object_per_line(tmp_path):
    sink = FileSink(tmp_path)
    path = await sink.append("crm", "gold", "jsonl", ["unified_individual_id", "member"],
                             [{"unified_individual_id": "u1", "member": True}])
    await sink.append("crm", "gold", "jsonl", ["unified_individual_id", "member"],
                      [{"unified_individual_id": "u2", "member": False}, {"unified_individual_id": "u1", "member": False}])
    assert path == tmp_path.resolve() / "crm" / "gold.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"unified_individual_id": "u1", "member": True}, {"unified_individual_id": "u2", "member": False},
                     {"unified_individual_id": "u1", "member": False}]


async def test_csv_gets_one_header_and_renders_booleans_nulls_and_objects(tmp_path):
    sink = FileSink(tmp_path)
    columns = ["unified_individual_id", "member", "city", "payload"]
    await sink.append("out", "a", "csv", columns,
                      [{"unified_individual_id": "u1", "member": True, "city": "Oslo, NO", "payload": {"x": [1, 2]}}])
    path = await sink.append("out", "a", "csv", columns,
                             [{"unified_individual_id": "u2", "member": False, "city": None, "payload": None}])
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [columns, ["u1", "true", "Oslo, NO", '{"x":[1,2]}'], ["u2", "false", "", ""]]


async def test_csv_with_other_columns_is_a_permanent_failure(tmp_path):
    sink = FileSink(tmp_path)
    await sink.append("out", "a", "csv", ["a", "b"], [{"a": 1, "b": 2}])
    with pytest.raises(DeliveryError) as info:
        await sink.append("out", "a", "csv", ["a", "c"], [{"a": 1, "c": 2}])
    assert info.value.permanent


async def test_a_folder_escaping_the_root_is_refused(tmp_path):
    sink = FileSink(tmp_path / "exports")
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "link").symlink_to(tmp_path)
    for directory in ("../x", "/tmp", "link"):
        with pytest.raises(DeliveryError) as info:
            await sink.append(directory, "a", "jsonl", ["a"], [{"a": 1}])
        assert info.value.permanent
    assert not (tmp_path / "a.jsonl").exists()
