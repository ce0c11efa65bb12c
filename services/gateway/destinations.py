"""Where activated rows go: the signed webhook sender with its URL policy, and the JSONL/CSV file sink."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import ipaddress
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import httpx

from shared.log import get_logger

log = get_logger("gateway.destinations")

DELIVERY_ID_HEADER = "X-Tailor-Delivery-Id"
TIMESTAMP_HEADER = "X-Tailor-Timestamp"
SIGNATURE_HEADER = "X-Tailor-Signature"
# Statuses that say "try again later" although they are 4xx.
RETRYABLE_4XX = {408, 429}

Resolver = Callable[[str, int], Awaitable[list[str]]]


class DeliveryError(Exception):
    """A delivery that did not go through; `permanent` ones are not retried until the configuration changes."""

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


# URL policy.

async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the host name resolves to (IPv4 and IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def address_problem(text: str) -> str | None:
    """Why an address may not receive webhooks without allow_private_network, or None when it is public."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 (::ffff:a.b.c.d, 6to4) is judged as the IPv4 address it carries.
        address = address.ipv4_mapped or address.sixtofour or address
    for flag, label in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                        ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                        ("is_private", "private"), ("is_reserved", "reserved")):
        if getattr(address, flag):
            return f"{label} address {address}"
    if not address.is_global:
        return f"non-public address {address}"
    return None


async def check_url(url: str, allow_private_network: bool, resolve: Resolver = system_resolve) -> str | None:
    """What is wrong with a webhook URL under the policy, or None when it may be used.

    https is required; loopback, link-local, private, reserved and unspecified addresses are refused, and a host
    name is refused when any address it resolves to is. allow_private_network lifts both rules (http allowed too).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"is not a valid URL ({error})"
    allowed = ("https", "http") if allow_private_network else ("https",)
    if parts.scheme not in allowed:
        return "must use https" if not allow_private_network else "must use https or http"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials; sign with the destination secret instead"
    if allow_private_network:
        return None
    host = parts.hostname
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await resolve(host, port or 443)
        except (OSError, UnicodeError) as error:
            return f"host {host} does not resolve ({error})"
        if not addresses:
            return f"host {host} does not resolve"
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            suffix = "" if address == host else f" (host {host} resolves to it)"
            return f"points to a {problem}{suffix}; not allowed unless allow_private_network is set"
    return None


# Signing.

def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of "<timestamp>.<body>" under the destination secret."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """Whether a signature header ("v1=<hex>") matches; what a receiver runs (also used by tests)."""
    scheme, _, value = header.partition("=")
    return scheme == "v1" and hmac.compare_digest(value, signature(secret, timestamp, body))


def signed_headers(secret: str, delivery_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(now if now is not None else time.time()))
    return {
        "Content-Type": "application/json",
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: "v1=" + signature(secret, timestamp, body),
    }


class WebhookSender:
    """POSTs one delivery, retrying 5xx, 408, 429, timeouts and connection errors with exponential backoff."""

    def __init__(self, client: httpx.AsyncClient | None = None, *, attempts: int = 4, base_delay: float = 0.2,
                 max_delay: float = 5.0, timeout: float = 10.0, resolve: Resolver = system_resolve):
        self.client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.resolve = resolve

    async def close(self) -> None:
        await self.client.aclose()

    async def send(self, url: str, secret: str, allow_private_network: bool, delivery_id: str, body: bytes) -> None:
        """Delivers or raises DeliveryError; the URL is checked again so a host re-pointed since is caught."""
        problem = await check_url(url, allow_private_network, self.resolve)
        if problem is not None:
            raise DeliveryError(f"url {problem}", permanent=True)
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(min(self.base_delay * 2 ** (attempt - 1), self.max_delay))
            try:
                reply = await self.client.post(url, content=body, headers=signed_headers(secret, delivery_id, body))
            except httpx.TimeoutException as error:
                last = f"timeout: {error!r}"
                continue
            except httpx.TransportError as error:
                last = f"connection error: {error!r}"
                continue
            if 200 <= reply.status_code < 300:
                return
            last = f"HTTP {reply.status_code}: {reply.text[:200]}"
            if reply.status_code < 500 and reply.status_code not in RETRYABLE_4XX:
                raise DeliveryError(last, permanent=True)
            log.info("webhook_retry", delivery_id=delivery_id, attempt=attempt + 1, error=last)
        raise DeliveryError(last, permanent=False)


# File sink.

def default_export_root() -> Path:
    """TAILOR_GATEWAY_EXPORT_ROOT, else TAILOR_HOME/exports, else .tailor/exports at the project root."""
    explicit = os.environ.get("TAILOR_GATEWAY_EXPORT_ROOT")
    if explicit:
        return Path(explicit)
    home = os.environ.get("TAILOR_HOME")
    return Path(home) / "exports" if home else Path(__file__).resolve().parents[2] / ".tailor" / "exports"


def directory_problem(directory: str) -> str | None:
    """What is wrong with a file sink folder (it must be relative and stay under the export root), or None."""
    if not directory.strip():
        return "must not be empty"
    if "\\" in directory or "\x00" in directory:
        return "must use / as separator and no NUL"
    path = PurePosixPath(directory)
    if path.is_absolute() or (len(directory) > 1 and directory[1] == ":"):
        return "must be relative to the export root"
    if ".." in path.parts:
        return "must not contain '..'"
    return None


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n" for row in rows)


def csv_text(columns: list[str], rows: list[dict], header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()


class FileSink:
    """Appends rows to <root>/<directory>/<name>.jsonl or .csv; a resent delivery appends again (upsert by key)."""

    def __init__(self, root: Path | None = None):
        self.root = (root or default_export_root()).resolve()

    def path_of(self, directory: str, name: str, extension: str) -> Path:
        problem = directory_problem(directory)
        if problem is not None:
            raise DeliveryError(f"directory {problem}", permanent=True)
        folder = (self.root / directory).resolve()
        if not folder.is_relative_to(self.root):
            raise DeliveryError("directory leaves the export root", permanent=True)
        return folder / f"{name}.{extension}"

    async def append(self, directory: str, name: str, file_format: str, columns: list[str], rows: list[dict]) -> Path:
        """Appends rows in the format ("jsonl" or "csv"); CSV files start with a header of the columns."""
        path = self.path_of(directory, name, file_format)
        await asyncio.to_thread(self._write, path, file_format, columns, rows)
        return path

    @staticmethod
    def _write(path: Path, file_format: str, columns: list[str], rows: list[dict]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if file_format == "csv":
                fresh = not path.exists() or path.stat().st_size == 0
                if not fresh:
                    with path.open(newline="") as existing:
                        found = next(csv.reader(existing), [])
                    if found != columns:
                        raise DeliveryError(f"{path.name} has columns {found}, rows have {columns}; move the file "
                                            "away or use another directory", permanent=True)
                text = csv_text(columns, rows, header=fresh)
            else:
                text = jsonl_text(rows)
            with path.open("a", encoding="utf-8", newline="") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
        except OSError as error:
            raise DeliveryError(f"cannot write {path}: {error}", permanent=False) from error
