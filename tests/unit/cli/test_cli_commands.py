"""Argument handling of the CLI's bulk-data, recommendation, training and tenant commands (no server)."""

from __future__ import annotations

import pytest

from personalization.gateway.v1 import gateway_service_pb2 as gw
from tailor_cli import cli


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.run(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"tailor {cli.package_version()}"
    assert cli.package_version() != "unknown"


def test_import_takes_the_mapping_file_then_map_flags_over_it(tmp_path):
    mapping = tmp_path / "m.yaml"
    mapping.write_text("columns:\n  identity.email: Email\n  time: When\nevent_type: purchase\nsource: pos\n")
    args = cli.build_parser().parse_args(["import", "events", "-f", "x.csv", "--mapping", str(mapping),
                                          "--map", "time=Timestamp", "--map", "item_id=SKU", "--source", "shop"])
    options = cli.import_options(args)
    assert options.columns == {"identity.email": "Email", "time": "Timestamp", "item_id": "SKU"}
    assert (options.event_type, options.source, options.batch_size, options.concurrency) == \
        ("purchase", "shop", 1000, 4)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "5000"], "--batch-size"),
    (["--concurrency", "0"], "--concurrency"),
    (["--map", "identity.email"], "KEY=COLUMN"),
])
def test_import_refuses_bad_options_before_reading_the_file(argv, message, capsys):
    assert cli.run(["import", "events", "-f", "missing.csv", "--api-key", "k", *argv]) == 1
    assert message in capsys.readouterr().err


def test_import_of_a_missing_file_and_an_unknown_kind_exit_with_errors(capsys):
    assert cli.run(["import", "events", "-f", "no-such-file.csv", "--api-key", "k"]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_kind:
        cli.run(["import", "orders", "-f", "x.csv"])
    assert bad_kind.value.code == 2


def test_a_mapping_file_with_unknown_entries_is_refused(tmp_path, capsys):
    mapping = tmp_path / "m.yaml"
    mapping.write_text("columns: {time: When}\ncolour: blue\n")
    path = tmp_path / "x.csv"
    path.write_text("When\n1\n")
    assert cli.run(["import", "events", "-f", str(path), "--mapping", str(mapping), "--api-key", "k"]) == 1
    assert "colour" in capsys.readouterr().err


def test_recommend_builds_the_request_for_an_item_a_cart_and_an_individual():
    args = cli.build_parser().parse_args([
        "recommend", "--identity", "email:a@x.io", "--item", "sku1", "--cart", "c1", "--cart", "c2", "--count", "5",
        "--exclude", "sku9", "--exclude-purchased", "--attribute", "name", "--recommender", "co_viewed",
        "--explain", "--test-mode", "--channel", "web"])
    request = cli.recommend_request(args)
    assert (request.individual_id.type, request.individual_id.value) == ("email", "a@x.io")
    assert (request.anchor_item_id, list(request.cart_item_ids), request.count) == ("sku1", ["c1", "c2"], 5)
    assert (list(request.exclude_item_ids), request.exclude_purchased) == (["sku9"], True)
    assert (request.recommender, list(request.item_attributes), request.channel) == ("co_viewed", ["name"], "web")
    assert list(request.execution_flags) == [gw.EXECUTION_FLAG_DIAGNOSTICS, gw.EXECUTION_FLAG_TEST_MODE]
    anonymous = cli.recommend_request(cli.build_parser().parse_args(["recommend"]))
    assert not anonymous.HasField("individual_id") and anonymous.recommender == ""


def test_scopes_are_a_comma_separated_list_of_known_scopes():
    assert cli.parse_scopes("ingest, decide") == ["ingest", "decide"]
    for bad in ("", "ingest,operator", "read"):
        with pytest.raises(cli.UsageError):
            cli.parse_scopes(bad)


def test_the_operator_key_comes_from_the_flag_then_the_environment_then_the_stored_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path))
    monkeypatch.delenv("TAILOR_OPERATOR_KEY", raising=False)
    monkeypatch.delenv("TAILOR_OPERATOR_KEY_FILE", raising=False)
    args = cli.build_parser().parse_args(["tenant", "list"])
    assert cli.operator_key(args) == ""
    (tmp_path / "operator_key").write_text("tlr_stored\n")
    assert cli.operator_key(args) == "tlr_stored"
    (tmp_path / "elsewhere").write_text("tlr_gateway_file\n")  # where a gateway was told to write it
    monkeypatch.setenv("TAILOR_OPERATOR_KEY_FILE", str(tmp_path / "elsewhere"))
    assert cli.operator_key(args) == "tlr_gateway_file"
    monkeypatch.setenv("TAILOR_OPERATOR_KEY", "tlr_env")
    assert cli.operator_key(args) == "tlr_env"
    flagged = cli.build_parser().parse_args(["tenant", "list", "--operator-key", "tlr_flag"])
    assert cli.operator_key(flagged) == "tlr_flag"


def test_operator_commands_without_an_operator_key_say_where_to_find_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path))
    monkeypatch.delenv("TAILOR_OPERATOR_KEY", raising=False)
    assert cli.run(["tenant", "list"]) == 1
    assert "operator key" in capsys.readouterr().err
    assert cli.run(["tenant", "quota", "acme", "--credits", "-1"]) == 1
    assert "zero (unlimited) or more" in capsys.readouterr().err


def test_key_commands_and_train_parse():
    parser = cli.build_parser()
    assert parser.parse_args(["tenant", "revoke-key", "abc"]).key_id == "abc"
    assert parser.parse_args(["tenant", "rotate-key", "abc"]).key_id == "abc"
    train = parser.parse_args(["train", "for_you", "--timeout", "60"])
    assert (train.name, train.timeout) == ("for_you", 60.0)
    ingest = parser.parse_args(["ingest", "-f", "e.jsonl", "--batch-size", "250"])
    assert (ingest.file, ingest.batch_size) == ("e.jsonl", 250)


def test_the_new_commands_import_no_service_module():
    import ast
    import inspect

    names = ["_ingest", "import_options", "_import", "recommend_request", "_recommend", "_train", "operator_key",
             "_tenant_create", "_tenant_list", "_tenant_quota", "_revoke_key", "_rotate_key", "_list_keys"]
    for name in names:
        tree = ast.parse(inspect.getsource(getattr(cli, name)).lstrip())
        modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in modules if m and m.startswith("services")], name
    source = inspect.getsource(__import__("tailor_cli.importer", fromlist=["x"]))
    assert "from services" not in source and "import services" not in source
