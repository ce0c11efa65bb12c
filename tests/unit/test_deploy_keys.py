"""The deployment files hand the signing key to the gateway and the pipeline workers alone, and in Kubernetes only
those reach the domain services."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SIGNERS = {"gateway", "pipeline"}
DOMAIN = {"identity": 50052, "profile-graph": 50053, "recommender": 50054, "decision": 50055}


def _k8s() -> list[dict]:
    files = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
    return [doc for name in files for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if doc]


def test_kubernetes_mounts_the_signing_key_in_the_gateway_and_workers_and_the_verify_key_elsewhere():
    mounted = {}
    for doc in _k8s():
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            secrets = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
            env = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
            mounted[doc["metadata"]["name"]] = (secrets, env)
    assert set(mounted) == SIGNERS | set(DOMAIN)
    for name, (secrets, env) in mounted.items():
        if name in SIGNERS:
            assert secrets == {"tailor-internal-signing-key"} and "TAILOR_INTERNAL_SIGNING_KEY_FILE" in env, name
        else:
            assert secrets == {"tailor-internal-verify-key"} and "TAILOR_INTERNAL_VERIFY_KEY_FILE" in env, name
            assert "TAILOR_INTERNAL_SIGNING_KEY_FILE" not in env, name


def test_only_the_gateway_and_workers_may_reach_each_domain_service():
    policies = [doc for doc in _k8s() if doc["kind"] == "NetworkPolicy"]
    guarded = {}
    for policy in policies:
        target = policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        callers, ports = set(), set()
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, policy["metadata"]["name"]  # no namespace or IP blocks
                callers |= {v for e in peer["podSelector"]["matchExpressions"] for v in e["values"]}
            ports |= {p["port"] for p in rule["ports"]}
        guarded[target] = (callers, ports)
    assert guarded == {**{svc: (SIGNERS, {port}) for svc, port in DOMAIN.items()}, "pipeline": (set(), set())}


def test_compose_gives_the_signing_key_to_the_gateway_and_workers_alone():
    services = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())["services"]
    for name, service in services.items():
        secrets = {s["source"] for s in service.get("secrets", [])}
        if name in ("postgres", "db-bootstrap"):  # the database and the one-shot role bootstrap call no service
            assert secrets == set()
        elif name in SIGNERS:
            assert secrets == {"internal_signing_key"}, name
        else:
            assert secrets == {"internal_verify_key"}, name
            assert "TAILOR_INTERNAL_VERIFY_KEY_FILE" in service["environment"], name
