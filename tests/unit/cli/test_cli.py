"""The `tailor` command line: argument handling, requests it builds, and how failures are reported."""

from __future__ import annotations

import grpc
import pytest

from personalization.common.v1 import common_pb2
from personalization.gateway.v1 import gateway_service_pb2 as gw
from shared.errors import InvalidArgument
from tailor_cli import cli


def test_identity_is_type_colon_value_and_the_value_may_contain_colons():
    assert cli.parse_identity("customer_id:17850") == ("customer_id", "17850")
    assert cli.parse_identity("custom:urn:x:1") == ("custom", "urn:x:1")


@pytest.mark.parametrize("text", ["17850", ":17850", "email:", ""])
def test_an_identity_without_type_or_value_is_refused(text):
    with pytest.raises(cli.UsageError):
        cli.parse_identity(text)


def test_decide_sends_every_point_and_the_flags_asked_for():
    who = {"individual_id": common_pb2.Identity(type="customer_id", value="17850")}
    request = cli.decide_request(["home_banner", "home_recs"], who, explain=True, test_mode=True, channel="web")

    assert [p.name for p in request.personalization_points] == ["home_banner", "home_recs"]
    assert list(request.execution_flags) == [gw.EXECUTION_FLAG_DIAGNOSTICS, gw.EXECUTION_FLAG_TEST_MODE]
    assert (request.individual_id.type, request.individual_id.value) == ("customer_id", "17850")
    assert request.context.channel == "web"
    assert list(cli.decide_request(["p"], who).execution_flags) == []


def test_a_failed_call_prints_code_message_reason_and_field_violations():
    status = InvalidArgument([("personalization_points[0].name", "unknown point")], reason="POINT_INVALID").to_status()
    error = grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata),
                                 details=status.details)

    text = cli.format_rpc_error(error)

    assert text.splitlines() == [
        "error: INVALID_ARGUMENT: invalid argument: personalization_points[0].name: unknown point",
        "  reason: POINT_INVALID",
        "  personalization_points[0].name: unknown point",
    ]


def test_apply_with_a_bad_file_exits_1_naming_the_bad_entry(tmp_path, capsys):
    bad = tmp_path / "config.yaml"
    bad.write_text("segments:\n  - {rule: 'true'}\n")

    code = cli.run(["apply", "-f", str(bad), "--api-key", "tlr_x"])

    assert code == 1
    assert "segments[0].name: is required" in capsys.readouterr().err


def test_a_missing_file_exits_1(tmp_path, capsys):
    assert cli.run(["apply", "-f", str(tmp_path / "nope.yaml"), "--api-key", "k"]) == 1
    assert "nope.yaml" in capsys.readouterr().err


def test_decide_without_identity_exits_1(capsys):
    assert cli.run(["decide", "--point", "home_banner", "--api-key", "k"]) == 1
    assert "--identity" in capsys.readouterr().err


def test_the_api_key_defaults_to_the_environment_then_the_stored_demo_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path))
    monkeypatch.delenv("TAILOR_API_KEY", raising=False)
    assert cli.default_api_key() == ""
    (tmp_path / "demo_key").write_text("tlr_stored\n")
    assert cli.default_api_key() == "tlr_stored"
    monkeypatch.setenv("TAILOR_API_KEY", "tlr_env")
    assert cli.default_api_key() == "tlr_env"


def test_tenant_create_without_an_operator_key_exits_1_and_says_where_to_find_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path))
    monkeypatch.delenv("TAILOR_OPERATOR_KEY", raising=False)
    monkeypatch.delenv("TAILOR_OPERATOR_KEY_FILE", raising=False)
    assert cli.run(["tenant", "create", "acme"]) == 1
    assert "no operator key" in capsys.readouterr().err


def test_the_progress_bar_shows_the_fraction_done():
    from tailor_cli.cli import progress_bar

    assert progress_bar(50, 100, width=10) == "[#####-----]  50.0%  50/100"
    assert progress_bar(0, 0, width=4) == "[----]   0.0%  0/0"
    assert progress_bar(7, 5, width=4).startswith("[####] 100.0%")


def test_batch_run_and_tenant_quota_parse():
    from tailor_cli.cli import build_parser

    args = build_parser().parse_args(["batch", "run", "--segment", "vip", "--point", "a", "--point", "b"])
    assert (args.segment, args.point) == ("vip", ["a", "b"])
    args = build_parser().parse_args(["tenant", "quota", "acme", "--credits", "1000", "--rate", "50"])
    assert (args.name, args.credits, args.rate) == ("acme", 1000, 50.0)


def test_experiment_report_parses():
    from tailor_cli.cli import build_parser

    args = build_parser().parse_args(["experiment", "report", "hero_test", "-o", "out.html"])
    assert (args.name, args.output) == ("hero_test", "out.html")
