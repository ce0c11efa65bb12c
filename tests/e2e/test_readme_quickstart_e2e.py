"""The README's quickstart, run as written (bash, grpcurl, the tailor CLI) against a `tailor up` with the demo.

The only change to the commands is the gateway's address (the suite listens on free ports here); the shell runs in
a folder whose .tailor and .venv are the launched suite's home and the project's venv, as in a checkout.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pytest

from tailor_cli import demo
from tests.conftest import ROOT
from tests.integration.launcher.launched import launch, launcher_env, project_home
from tests.unit.cli.test_readme_quickstart import quickstart_blocks

STEP_TIMEOUT = 30.0  # the pipeline processes an acknowledged event in milliseconds; a busy machine gets slack


@pytest.fixture(scope="module")
async def shell(tmp_path_factory):
    """Runs README blocks (after the setup block) in a checkout-like folder against a launched suite."""
    tmp = tmp_path_factory.mktemp("quickstart")
    with project_home("quickstart") as home:
        async for fixture in _shell(tmp, home):
            yield fixture


async def _shell(tmp, home):
    launcher = launch(launcher_env(home, TAILOR_PIPELINE_WORKERS="1"), tmp / "ready.json", demo=True)
    try:
        ready = await launcher.wait_ready()
        cwd = tmp / "checkout"
        cwd.mkdir()
        (cwd / ".tailor").symlink_to(home)
        (cwd / ".venv").symlink_to(ROOT / ".venv")
        env = {**os.environ, "TAILOR_HOME": str(home), "TAILOR_GATEWAY_ADDR": ready["addresses"]["gateway"]}
        setup = quickstart_blocks()[0][1]

        def run(block: str) -> str:
            """The block's standard output; an AssertionError with both outputs when a command fails."""
            script = (setup + "\n" + block).replace(demo.README_GATEWAY, ready["addresses"]["gateway"])
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{block}\n--- stdout:\n{done.stdout}\n--- stderr:\n{done.stderr}"
            return done.stdout

        yield run, launcher, ready
    finally:
        code, output = launcher.stop()
        assert code == 0, output


def _step(title: str) -> str:
    return next(code for heading, code in quickstart_blocks() if heading.endswith(title))


async def _eventually(run, block: str, check) -> str:
    """Runs the block until check(output) holds (the pipeline works after the acknowledgement)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            output = run(block)  # NOT_FOUND until the pipeline has resolved the identity
            check(output)
            return output
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def _grpcurl_replies(output: str) -> list[dict]:
    """The JSON replies grpcurl printed (one object each), skipping the tailor lines that follow them."""
    replies, decoder, at = [], json.JSONDecoder(), 0
    while (at := output.find("{", at)) != -1:
        reply, end = decoder.raw_decode(output, at)
        replies.append(reply)
        at = end
    return replies


async def test_the_quickstart_journey_runs_as_written_from_anonymous_view_to_recommendations(shell):
    run, launcher, _ = shell
    # The banner shows these very commands.
    assert "# 1. " + demo.QUICKSTART[0].title in launcher.output

    for title in (demo.QUICKSTART[0].title, demo.QUICKSTART[1].title, demo.QUICKSTART[2].title):
        output = run(_step(title))
        ack = _grpcurl_replies(output)[0]
        assert ack["acks"][0]["status"] == "ACK_STATUS_STORED", output
        assert "stored 0, duplicate 1, rejected 0" in output, output  # tailor ingest sent the same event again

    def profile_done(output: str) -> None:
        grpcurl, tailor = _grpcurl_replies(output)[:2]
        for profile in (grpcurl, tailor):
            identities = {(i["type"], i["value"]) for i in profile["identities"]}
            assert identities >= {("email", demo.QUICKSTART_EMAIL), ("device_id", demo.QUICKSTART_DEVICE)}
            assert "big_spenders" in profile.get("segments", [])
            assert profile["insights"]["spend_30d"] == pytest.approx(1035.30)

    await _eventually(run, _step("Read the unified profile"), profile_done)

    output = run(_step("Get decisions"))
    grpcurl, tailor = _grpcurl_replies(output)[:2]
    for reply in (grpcurl, tailor):
        banner = next(p for p in reply["personalizations"] if p.get("personalizationPointName", p.get(
            "personalization_point_name")) == "home_banner")
        assert "vip_offer" in json.dumps(banner), reply

    output = run(_step("Get recommendations"))
    reply = _grpcurl_replies(output)[0]
    ids = [item.get("itemId", item.get("item_id")) for item in reply["items"]]
    assert 0 < len(ids) <= 5 and not {"22423", "85123A"} & set(ids), reply
    tailor_lines = [line for line in output.splitlines() if line.startswith(("  1  ", "  2  "))]
    assert len(tailor_lines) >= 2, output  # both tailor recommend commands listed items


async def test_grpcurl_describes_each_ports_methods_with_their_proto_comments(shell):
    _, _, ready = shell
    grpcurl = str(ROOT / ".venv" / "bin" / "grpcurl")
    for svc, address in ready["addresses"].items():
        service = f"personalization.{svc}.v1.{''.join(w.title() for w in svc.split('_'))}Service"
        listed = subprocess.run([grpcurl, "-plaintext", address, "list", service], capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        method = listed.stdout.split()[0]
        described = subprocess.run([grpcurl, "-plaintext", address, "describe", method], capture_output=True,
                                   text=True)
        assert described.returncode == 0, described.stderr
        assert f"{method} is a method:" in described.stdout
        assert "\n// " in described.stdout, described.stdout  # the proto's comment above the rpc

    gateway = ready["addresses"]["gateway"]
    ingest = subprocess.run([grpcurl, "-plaintext", gateway, "describe",
                             "personalization.gateway.v1.GatewayService.IngestEvents"], capture_output=True, text=True)
    assert "// Stores a batch of events durably and acknowledges each" in ingest.stdout, ingest.stdout + ingest.stderr
    hidden = subprocess.run([grpcurl, "-plaintext", gateway, "describe",
                             "personalization.recommender.v1.RecommenderService.Recommend"], capture_output=True,
                            text=True)
    assert hidden.returncode != 0 and "not found" in hidden.stderr.lower()
