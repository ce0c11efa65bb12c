"""The README's quickstart is the command list the start-up banner prints, and names the banner's demo customer."""

from __future__ import annotations

import re

from tailor_cli import demo
from tests.conftest import ROOT


def quickstart_blocks() -> list[tuple[str, str]]:
    """(heading, bash code) of each block in the README's Quickstart section, the setup block first."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart"):text.index("### Stop, logs, reset")]
    blocks, heading = [], ""
    for match in re.finditer(r"^### ([^\n]+)$|^```bash\n(.*?)^```$", section, re.M | re.S):
        if match.group(1):
            heading = match.group(1)
        else:
            blocks.append((heading, match.group(2).rstrip("\n")))
    return blocks[1:]  # the first block is `make run`


def test_the_readme_quickstart_is_the_banners_command_list_in_order():
    blocks = quickstart_blocks()

    assert blocks[0] == ("", demo.QUICKSTART_SETUP.commands)
    assert blocks[1:] == [(f"{n}. {step.title}", step.commands) for n, step in enumerate(demo.QUICKSTART, 1)]


def test_the_first_quickstart_step_sends_an_event_with_grpcurl_and_with_tailor_ingest():
    first = demo.QUICKSTART[0].commands

    assert "GatewayService/IngestEvents" in first.splitlines()[0]
    assert "tailor ingest -f -" in first


def test_the_banner_prints_every_quickstart_command_with_this_machines_tools_and_gateway():
    lines = demo.quickstart_lines("/opt/grpcurl", "/opt/tailor", "127.0.0.1:6000")
    text = "\n".join(lines)

    assert "127.0.0.1:50051" not in text and ".venv/bin" not in text
    for step in demo.QUICKSTART:
        expected = step.commands.replace(demo.README_GRPCURL, "/opt/grpcurl").replace(demo.README_TAILOR, "/opt/tailor")
        assert expected.replace(demo.README_GATEWAY, "127.0.0.1:6000") in text


def test_the_readmes_demo_customer_is_the_one_the_banner_names():
    text = (ROOT / "README.md").read_text()
    customers = set(re.findall(r"customer_id:(\d+)", text))

    assert customers == {demo.top_customer(demo.read_rows())}


def test_the_banner_prints_the_quickstart_flush_left_so_its_heredocs_paste_as_is(tmp_path):
    from tailor_cli.launcher import SERVICES, Suite, banner

    suite = Suite(ports={svc: 50051 + i for i, svc in enumerate(("gateway", *SERVICES[:-1]))}, log_dir=tmp_path)
    lines = banner(suite, "tlr_key", "18102", True, 1.0).splitlines()

    assert lines.count("EOF") == 2 * 3  # both commands of each of the three ingest steps
    assert "  export KEY=tlr_key" in lines
    assert lines.index("# 1. " + demo.QUICKSTART[0].title) < lines.index("EOF")
