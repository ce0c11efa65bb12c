"""The tests' internal keypair and the metadata an internal caller sends a domain service.

One keypair per test process (or bench), in a temporary folder, handed to in-process builds and to `tailor up`
the way the launcher hands its own to the services: TAILOR_INTERNAL_SIGNING_KEY_FILE and
TAILOR_INTERNAL_VERIFY_KEY_FILE. Settings already present (a keypair of the caller's) are kept.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from shared import service_auth

TEST_TOKEN_SECONDS = 6 * 3600.0


def keys() -> service_auth.KeyFiles:
    """The keypair of this process, made (and set in the environment) on first use; this process signs with it."""
    signing, verify = os.environ.get(service_auth.SIGNING_KEY_ENV), os.environ.get(service_auth.VERIFY_KEY_ENV)
    if signing and verify:
        files = service_auth.KeyFiles(Path(signing), Path(verify))
    else:
        folder = Path(tempfile.mkdtemp(prefix="tailor-test-keys-"))
        atexit.register(shutil.rmtree, folder, True)
        files = service_auth.ensure_keypair(folder)
        os.environ.update(files.environment())
    if service_auth._signer is None:
        # Hours, not minutes: a test or bench may hold its metadata for longer than a gateway's token lives.
        service_auth.use_signer(service_auth.Signer.from_file(files.signing, seconds=TEST_TOKEN_SECONDS))
    return files


def signer() -> service_auth.Signer:
    """The signer of this process's keypair (tests mint expired or otherwise bad tokens with it)."""
    return service_auth.Signer.from_file(keys().signing)


def tenant_md(tenant_id: str) -> tuple[tuple[str, str], ...]:
    """Metadata internal callers send to a domain service: a bearer token for tenant_id, as the gateway signs it."""
    keys()
    return ((service_auth.AUTHORIZATION_HEADER, "Bearer " + service_auth._signer.token(tenant_id)),)
