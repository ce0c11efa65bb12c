"""Internal tokens: the keypair on disk, minting and its cache, verification and its cache, what a call forwards."""

from __future__ import annotations

import asyncio
import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import context as ctx
from shared import service_auth
from shared.errors import Unauthenticated
from shared.settings import SettingsError


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_keypair_is_generated_once_with_the_private_key_readable_by_its_owner_alone(tmp_path):
    files = service_auth.ensure_keypair(tmp_path / "keys")
    assert stat.S_IMODE(files.signing.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.verify.stat().st_mode) == 0o644
    first = files.signing.read_bytes()
    again = service_auth.ensure_keypair(tmp_path / "keys")
    assert again == files and files.signing.read_bytes() == first
    token = service_auth.Signer.from_file(files.signing).mint("acme")
    assert service_auth.Verifier.from_file(files.verify).tenant_of(token) == "acme"


def test_a_lost_public_key_is_derived_again_from_the_private_key(tmp_path):
    files = service_auth.ensure_keypair(tmp_path)
    files.verify.unlink()
    service_auth.ensure_keypair(tmp_path)
    token = service_auth.Signer.from_file(files.signing).mint("acme")
    assert service_auth.Verifier.from_file(files.verify).tenant_of(token) == "acme"


def test_a_signer_reuses_a_tenants_token_until_half_of_its_life_is_left():
    clock = Clock()
    signer = service_auth.Signer(Ed25519PrivateKey.generate(), seconds=120, clock=clock)
    first = signer.token("acme")
    clock.now += 59
    assert signer.token("acme") == first
    assert signer.token("other") != first
    clock.now += 2
    assert signer.token("acme") != first


def test_a_verifier_refuses_expired_tokens_also_once_it_had_accepted_them():
    clock = Clock()
    key = Ed25519PrivateKey.generate()
    signer = service_auth.Signer(key, seconds=120, clock=clock)
    verifier = service_auth.Verifier(key.public_key(), leeway=5, clock=clock)
    token = signer.token("acme")
    assert verifier.tenant_of(token) == "acme"
    clock.now += 124
    assert verifier.tenant_of(token) == "acme"  # within the leeway, from the cache
    clock.now += 2
    with pytest.raises(Unauthenticated) as info:
        verifier.tenant_of(token)
    assert info.value.reason == "TOKEN_EXPIRED"
    with pytest.raises(Unauthenticated) as info:
        verifier.tenant_of(token)  # and again, now checked afresh
    assert info.value.reason == "TOKEN_EXPIRED"


@pytest.mark.parametrize("make, reason", [
    (lambda own, other: other.mint("acme"), "TOKEN_INVALID"),
    (lambda own, other: own.mint("acme", audience="someone-else"), "TOKEN_INVALID"),
    (lambda own, other: own.mint("acme", issued_at=1_000_000_000.0), "TOKEN_EXPIRED"),
    (lambda own, other: own.mint(""), "TOKEN_INVALID"),
    (lambda own, other: own.mint("acme", issued_at=time.time() + 3600), "TOKEN_INVALID"),  # issued in the future
    (lambda own, other: jwt.encode({"iss": "someone", "aud": "tailor-internal", "tenant": "acme", "iat": time.time(),
                                    "exp": time.time() + 60}, own._key, algorithm="EdDSA"), "TOKEN_INVALID"),
    (lambda own, other: own.mint("acme")[:-4] + "AAAA", "TOKEN_INVALID"),
    (lambda own, other: "not-a-token", "TOKEN_INVALID"),
    # alg "none": an unsigned token naming a tenant.
    (lambda own, other: "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnQiOiJhY21lIn0.", "TOKEN_INVALID"),
])
def test_bad_tokens_are_refused_with_a_precise_reason(make, reason):
    key = Ed25519PrivateKey.generate()
    own = service_auth.Signer(key)
    other = service_auth.Signer(Ed25519PrivateKey.generate())
    with pytest.raises(Unauthenticated) as info:
        service_auth.Verifier(key.public_key()).tenant_of(make(own, other))
    assert info.value.reason == reason


def test_the_tenant_comes_from_the_token_and_never_from_x_tenant_id():
    key = Ed25519PrivateKey.generate()
    verifier = service_auth.Verifier(key.public_key())
    token = service_auth.Signer(key).mint("acme")

    async def authenticate(metadata):
        return await verifier.authenticate("/svc/Method", metadata)

    assert asyncio.run(authenticate({"authorization": f"Bearer {token}", "x-tenant-id": "other"})) == "acme"
    for metadata in ({}, {"x-tenant-id": "acme"}, {"authorization": token}, {"authorization": "Bearer "}):
        with pytest.raises(Unauthenticated) as info:
            asyncio.run(authenticate(metadata))
        assert info.value.reason == "TOKEN_MISSING", metadata


def test_a_call_forwards_the_token_it_received_rather_than_minting():
    key = Ed25519PrivateKey.generate()
    received = service_auth.Signer(key).mint("acme")

    def outgoing(token: str, tenant: str) -> str:
        ctx.token_var.set(token)
        ctx.tenant_var.set(tenant)
        return service_auth.outgoing_authorization()

    # Each in a context of its own, as each served call is.
    import contextvars

    assert contextvars.copy_context().run(outgoing, received, "acme") == f"Bearer {received}"
    minted = contextvars.copy_context().run(outgoing, "", "acme")
    assert minted.startswith("Bearer ") and minted != f"Bearer {received}"  # the test process's signer
    saved = service_auth._signer
    service_auth.use_signer(None)
    try:
        assert contextvars.copy_context().run(outgoing, "", "acme") == ""  # a domain service mints nothing
    finally:
        service_auth.use_signer(saved)


def test_a_process_without_its_key_setting_refuses_to_start(monkeypatch):
    monkeypatch.delenv(service_auth.VERIFY_KEY_ENV)
    monkeypatch.delenv(service_auth.SIGNING_KEY_ENV)
    with pytest.raises(SettingsError, match=service_auth.VERIFY_KEY_ENV):
        service_auth.verifier_from_env()
    with pytest.raises(SettingsError, match=service_auth.SIGNING_KEY_ENV):
        service_auth.signer_from_env()


def test_a_key_file_that_is_not_an_ed25519_key_is_refused_naming_the_setting(monkeypatch, tmp_path):
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    monkeypatch.setenv(service_auth.VERIFY_KEY_ENV, str(bad))
    with pytest.raises(SettingsError, match=service_auth.VERIFY_KEY_ENV):
        service_auth.verifier_from_env()
    monkeypatch.setenv(service_auth.SIGNING_KEY_ENV, str(tmp_path / "missing.pem"))
    with pytest.raises(SettingsError, match="cannot read"):
        service_auth.signer_from_env()
