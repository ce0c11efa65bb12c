"""Service-to-service authentication: short-lived tokens the gateway signs and the domain services verify.

A token is a JWT signed with Ed25519 (EdDSA) carrying the tenant of one call: `iss` tailor-gateway, `aud`
tailor-internal, `tenant`, `iat`, `exp`. Only the gateway and its pipeline workers hold the private key
(TAILOR_INTERNAL_SIGNING_KEY_FILE); the domain services hold the public key (TAILOR_INTERNAL_VERIFY_KEY_FILE), so a
domain service cannot mint a token for any tenant. Tokens travel as `authorization: Bearer <token>`. A signer mints
one token per tenant and reuses it until half of its life is left; a verifier keeps what it verified until the
token expires, so a call costs a dictionary lookup. A domain service that calls another forwards the token it
received (ctx.token_var) and never mints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared import context as ctx
from shared.errors import Unauthenticated, shorten
from shared.settings import SettingsError, env_str

SIGNING_KEY_ENV = "TAILOR_INTERNAL_SIGNING_KEY_FILE"
VERIFY_KEY_ENV = "TAILOR_INTERNAL_VERIFY_KEY_FILE"
ISSUER = "tailor-gateway"
AUDIENCE = "tailor-internal"
ALGORITHM = "EdDSA"
AUTHORIZATION_HEADER = "authorization"
TOKEN_SECONDS = 120.0
# Clocks of two hosts may differ a little: a token is accepted this long past its exp (and before its iat).
LEEWAY_SECONDS = 5.0
# Valid tokens kept by a verifier (or per-tenant tokens by a signer) before the expired ones are dropped.
CACHE_ENTRIES = 10_000
SIGNING_KEY_FILE = "internal_signing_key.pem"
VERIFY_KEY_FILE = "internal_verify_key.pem"


@dataclass(frozen=True)
class KeyFiles:
    """Where a keypair lives: the private (signing) key and the public (verify) key, PEM files."""

    signing: Path
    verify: Path

    def environment(self) -> dict[str, str]:
        """The settings that point a process at these files (both: the gateway and pipeline workers)."""
        return {SIGNING_KEY_ENV: str(self.signing), VERIFY_KEY_ENV: str(self.verify)}


def ensure_keypair(directory: Path) -> KeyFiles:
    """The keypair under directory, generated on first use: the private key mode 0600, the public key 0644."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = KeyFiles(directory / SIGNING_KEY_FILE, directory / VERIFY_KEY_FILE)
    if not files.signing.exists():
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        tmp = files.signing.with_name(files.signing.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(tmp, 0o600)
        tmp.replace(files.signing)
        files.verify.unlink(missing_ok=True)  # a public key left from another keypair would verify nothing
    if not files.verify.exists():
        public = _load_private(files.signing, "the keypair's private key").public_key()
        tmp = files.verify.with_name(files.verify.name + ".tmp")
        tmp.write_bytes(public.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo))
        os.chmod(tmp, 0o644)
        tmp.replace(files.verify)
    return files


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise SettingsError(what, f"cannot read {path}: {err.strerror}") from None


def _load_key(path: Path, what: str, kind: str):
    """The Ed25519 key of the given kind ("private" or "public") in the PEM file at path."""
    load, expected = ((lambda data: serialization.load_pem_private_key(data, password=None)), Ed25519PrivateKey) \
        if kind == "private" else (serialization.load_pem_public_key, Ed25519PublicKey)
    try:
        key = load(_read(path, what))
    except ValueError:
        raise SettingsError(what, f"{path} is not a PEM {kind} key") from None
    if not isinstance(key, expected):
        raise SettingsError(what, f"{path} is not an Ed25519 {kind} key")
    return key


def _load_private(path: Path, what: str) -> Ed25519PrivateKey:
    return _load_key(path, what, "private")


def _load_public(path: Path, what: str) -> Ed25519PublicKey:
    return _load_key(path, what, "public")


def _required_path(name: str, who: str) -> Path:
    if not os.environ.get(name):
        raise SettingsError(name, f"is required: {who} (`tailor up` generates a keypair and sets it; see "
                                  "deploy/README.md for deployments). Internal calls are never left unauthenticated")
    return Path(env_str(name))


class Signer:
    """Mints tokens for tenants with the private key; one per tenant, reused until half of its life is left."""

    def __init__(self, private_key: Ed25519PrivateKey, *, seconds: float = TOKEN_SECONDS, clock=time.time):
        self._key = private_key
        self.seconds = seconds
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # tenant -> (token, time to mint a fresh one)

    @classmethod
    def from_file(cls, path: Path, **kwargs) -> Signer:
        return cls(_load_private(path, SIGNING_KEY_ENV), **kwargs)

    def mint(self, tenant: str, *, issued_at: float | None = None, seconds: float | None = None,
             audience: str = AUDIENCE) -> str:
        """A new token for tenant (tests pass issued_at, seconds or audience to make bad ones)."""
        now = self._clock() if issued_at is None else issued_at
        life = self.seconds if seconds is None else seconds
        claims = {"iss": ISSUER, "aud": audience, "tenant": tenant, "iat": int(now), "exp": int(now + life)}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def token(self, tenant: str) -> str:
        """The current token for tenant: the cached one while more than half of its life is left."""
        now = self._clock()
        cached = self._tokens.get(tenant)
        if cached is not None and now < cached[1]:
            return cached[0]
        if len(self._tokens) >= CACHE_ENTRIES:
            self._tokens = {t: v for t, v in self._tokens.items() if now < v[1]}
        token = self.mint(tenant, issued_at=now)
        self._tokens[tenant] = (token, now + self.seconds / 2)
        return token


class Verifier:
    """Checks tokens with the public key and names the tenant they carry; the server's authenticator."""

    def __init__(self, public_key: Ed25519PublicKey, *, leeway: float = LEEWAY_SECONDS, clock=time.time):
        self._key = public_key
        self.leeway = leeway
        self._clock = clock
        self._verified: dict[str, tuple[str, float]] = {}  # token -> (tenant, last accepted time)

    @classmethod
    def from_file(cls, path: Path, **kwargs) -> Verifier:
        return cls(_load_public(path, VERIFY_KEY_ENV), **kwargs)

    def tenant_of(self, token: str) -> str:
        """The tenant a token carries; Unauthenticated (TOKEN_INVALID, TOKEN_EXPIRED) when it is not good."""
        now = self._clock()
        cached = self._verified.get(token)
        if cached is not None:
            if now <= cached[1]:
                return cached[0]
            del self._verified[token]
            raise Unauthenticated("the internal token has expired", reason="TOKEN_EXPIRED")
        try:
            # The times are checked below against this verifier's clock (the same one its cache uses).
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                                options={"require": ["iss", "aud", "iat", "exp", "tenant"], "verify_exp": False,
                                         "verify_iat": False})
        except jwt.InvalidTokenError as err:
            raise Unauthenticated(f"the internal token is not valid: {shorten(str(err), 120)}",
                                  reason="TOKEN_INVALID") from None
        tenant, issued, expires = claims["tenant"], claims["iat"], claims["exp"]
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated("the internal token names no tenant", reason="TOKEN_INVALID")
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (issued, expires)):
            raise Unauthenticated("the internal token's iat and exp must be numbers", reason="TOKEN_INVALID")
        if now > expires + self.leeway:
            raise Unauthenticated("the internal token has expired", reason="TOKEN_EXPIRED")
        if issued > now + self.leeway:
            raise Unauthenticated("the internal token was issued in the future", reason="TOKEN_INVALID")
        if len(self._verified) >= CACHE_ENTRIES:
            self._verified = {t: v for t, v in self._verified.items() if now <= v[1]}
            if len(self._verified) >= CACHE_ENTRIES:
                self._verified.clear()
        self._verified[token] = (tenant, expires + self.leeway)
        return tenant

    async def authenticate(self, method: str, metadata: dict[str, str]) -> str:
        """The authenticator of the domain services: the tenant comes from the bearer token alone (x-tenant-id is
        ignored); the token is kept in ctx.token_var so that calls this one makes forward it."""
        header = metadata.get(AUTHORIZATION_HEADER, "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if not header:
            raise Unauthenticated(f"{method} needs an internal token from the gateway (authorization: Bearer); "
                                  f"{ctx.TENANT_HEADER} alone is not accepted", reason="TOKEN_MISSING")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the authorization metadata must be `Bearer <token>`", reason="TOKEN_MISSING")
        tenant = self.tenant_of(token)
        ctx.token_var.set(token)
        return tenant


def signer_from_env() -> Signer:
    """The signer of the gateway and pipeline workers (TAILOR_INTERNAL_SIGNING_KEY_FILE, required)."""
    return Signer.from_file(_required_path(SIGNING_KEY_ENV, "the gateway and pipeline workers sign internal calls"))


def verifier_from_env() -> Verifier:
    """The verifier of a domain service (TAILOR_INTERNAL_VERIFY_KEY_FILE, required)."""
    return Verifier.from_file(_required_path(VERIFY_KEY_ENV, "a domain service verifies every internal call"))


# The process's signer: set once by the gateway and the pipeline workers; the domain services have none.
_signer: Signer | None = None


def use_signer(signer: Signer | None) -> None:
    """Makes signer the one this process mints outgoing tokens with (None: this process never mints)."""
    global _signer
    _signer = signer


def outgoing_authorization() -> str:
    """The authorization metadata of an outgoing internal call: the token the current call arrived with, else a
    token the process's signer mints for the current tenant; empty when there is neither."""
    received = ctx.token_var.get()
    if received:
        return "Bearer " + received
    tenant = ctx.tenant_var.get()
    if tenant and _signer is not None:
        return "Bearer " + _signer.token(tenant)
    return ""
