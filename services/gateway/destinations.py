"""Where activated rows go: the signed webhook sender with its URL policy, and the JSONL/CSV file sink."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import http
import io
import ipaddress
import json
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx

from shared.errors import shorten
from shared.log import get_logger
from shared.settings import SettingsError

log = get_logger("gateway.destinations")

DELIVERY_ID_HEADER = "X-Tailor-Delivery-Id"
TIMESTAMP_HEADER = "X-Tailor-Timestamp"
SIGNATURE_HEADER = "X-Tailor-Signature"
# Statuses that say "try again later" although they are 4xx.
RETRYABLE_4XX = {408, 429}

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the host name resolves to (IPv4 and IPv6), in the resolver's order of preference."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class DeliveryError(Exception):
    """A delivery that did not go through; `permanent` ones are not retried until the configuration changes."""

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


# URL policy.
#
# A webhook target is vetted the moment it is called: the host is resolved once, every address it resolves to is
# judged, and the request is made to one of those vetted addresses (the URL's host kept as the Host header and the
# TLS server name), so a DNS answer that changes between the check and the connection (rebinding) reaches nothing
# unchecked. Private and internal addresses pass only inside the networks the operator allows
# (TAILOR_GATEWAY_WEBHOOK_ALLOWED_NETWORKS); nothing a tenant sends can widen that.

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOWED_NETWORKS_SETTING = "TAILOR_GATEWAY_WEBHOOK_ALLOWED_NETWORKS"
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")


def parse_networks(raw: str, name: str = ALLOWED_NETWORKS_SETTING) -> tuple[Network, ...]:
    """Comma-separated CIDRs (e.g. "127.0.0.0/8,10.20.0.0/16"); a malformed one stops start-up naming the setting."""
    networks = []
    for part in (p.strip() for p in raw.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError as error:
                raise SettingsError(name, f"{part!r} is not a network in CIDR form ({error})") from None
    return tuple(networks)


@dataclass(frozen=True)
class UrlPolicy:
    """Which webhook targets may be called: public addresses over https, plus the networks the operator allows."""

    allowed_networks: tuple[Network, ...] = ()
    resolve: Resolver = system_resolve

    def allows(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for n in self.allowed_networks)


class RefusedUrl(Exception):
    """A webhook URL the policy refuses; `transient` when only the DNS lookup failed (worth retrying later)."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Target:
    """A vetted webhook target: the URL as given and the checked addresses to connect to, in resolver order."""

    url: httpx.URL
    addresses: list[str]


def _label(address: Address) -> str | None:
    """The kind of non-public address this is, or None when it is a public unicast address."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in SHARED_ADDRESS_SPACE:
        return "shared, CGNAT"
    if address in UNIQUE_LOCAL:
        return "unique-local"
    if address in NAT64_LOCAL:
        return "local NAT64"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "non-public"
    return None


def _judged(address: Address) -> list[Address]:
    """The addresses to judge: an IPv4 address carried in IPv6 (mapped, 6to4, NAT64) is judged as well."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]
        if address.sixtofour is not None:
            return [address.sixtofour, address]
        if address in NAT64:   # translated to the IPv4 address it carries
            return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return [address]


def _problem(text: str, policy: UrlPolicy) -> tuple[str, Address] | None:
    """The kind and address that make this address unfit under the policy, or None when it may be called."""
    for address in _judged(ipaddress.ip_address(text.split("%", 1)[0])):
        if not policy.allows(address):
            label = _label(address)
            if label is not None:
                return label, address
    return None


def address_problem(text: str, policy: UrlPolicy = UrlPolicy()) -> str | None:
    """Why an address may not receive webhooks under the policy, or None when it may."""
    problem = _problem(text, policy)
    return None if problem is None else f"{problem[0]} address {problem[1]}"


def _literal(host: str) -> Address | None:
    """The address a host names literally, or None for a DNS name; other numeric spellings are refused."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if NUMERIC_HOST.fullmatch(host):
        try:
            meant = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
        raise RefusedUrl(f"host {shorten(host, 64)} is a non-standard spelling of {meant}; "
                         "write addresses in dotted form")
    return None


async def vet(url: str, policy: UrlPolicy) -> Target:
    """Resolves the URL's host once and checks every address; raises RefusedUrl with a short reason."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise RefusedUrl("is not a valid URL") from None
    if parsed.scheme not in ("https", "http"):
        raise RefusedUrl("must use https")
    host = parsed.host
    if not host:
        raise RefusedUrl("must name a host")
    if parsed.userinfo:
        raise RefusedUrl("must not carry credentials; sign with the destination secret instead")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise RefusedUrl("has a port out of range")
    if parsed.fragment:
        raise RefusedUrl("must not have a fragment")
    literal = _literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await policy.resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
        except (OSError, UnicodeError):
            raise RefusedUrl(f"host {shorten(host, 64)} does not resolve", transient=True) from None
        if not addresses:
            raise RefusedUrl(f"host {shorten(host, 64)} does not resolve", transient=True)
    for address in addresses:
        problem = _problem(address, policy)
        if problem is not None:
            # The address a DNS name resolves to is not repeated: it would map the operator's internal DNS.
            what = (f"{problem[1]} ({problem[0]})" if literal is not None
                    else f"({problem[0]}; host {shorten(host, 64)})")
            raise RefusedUrl(f"points to a non-public address {what}; only public addresses are allowed, and networks the operator "
                             f"allows in {ALLOWED_NETWORKS_SETTING}")
    if parsed.scheme == "http" and not all(
            policy.allows(a) for address in addresses for a in _judged(ipaddress.ip_address(address))):
        raise RefusedUrl(f"must use https (http only for networks the operator allows in {ALLOWED_NETWORKS_SETTING})")
    return Target(parsed, addresses)


async def check_url(url: str, policy: UrlPolicy = UrlPolicy()) -> str | None:
    """What is wrong with a webhook URL under the policy, or None when it may be used."""
    try:
        await vet(url, policy)
    except RefusedUrl as refused:
        return str(refused)
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


def reply_reason(status: int) -> str:
    """A fixed description of a receiver's answer: its status code and the standard phrase, never its body."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "non-standard status"
    reason = f"HTTP {status} ({phrase})"
    return reason + "; redirects are not followed" if 300 <= status < 400 else reason


class WebhookSender:
    """POSTs one delivery to a vetted address, retrying 5xx, 408, 429, timeouts and connection errors with backoff.

    Redirects are not followed (a 3xx is a permanent failure), proxies from the environment are not used (they
    would make the connection instead of us), connections are not reused across deliveries, and the receiver's
    body is never read: only its status counts.
    """

    def __init__(self, client: httpx.AsyncClient | None = None, *, attempts: int = 4, base_delay: float = 0.2,
                 max_delay: float = 5.0, timeout: float = 10.0):
        # No kept-alive connections: a pool is keyed by address, so a connection opened (and its certificate
        # checked) for one host name would carry the next delivery to another name on the same address.
        self.client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                                                  limits=httpx.Limits(max_keepalive_connections=0))
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay

    async def close(self) -> None:
        await self.client.aclose()

    async def send(self, url: str, secret: str, delivery_id: str, body: bytes, policy: UrlPolicy) -> None:
        """Delivers or raises DeliveryError; the URL is vetted under the policy again before every attempt."""
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(min(self.base_delay * 2 ** (attempt - 1), self.max_delay))
            try:
                target = await vet(url, policy)
            except RefusedUrl as refused:
                if not refused.transient:
                    raise DeliveryError(f"url {refused}", permanent=True) from None
                last = f"url {refused}"
                continue
            try:
                status = await self._post(target, signed_headers(secret, delivery_id, body), body)
            except httpx.TimeoutException:
                last = "timed out"
                continue
            except httpx.TransportError as error:
                last = f"connection failed ({type(error).__name__})"
                continue
            if 200 <= status < 300:
                return
            last = reply_reason(status)
            if status < 500 and status not in RETRYABLE_4XX:
                raise DeliveryError(last, permanent=True)
            log.info("webhook_retry", delivery_id=delivery_id, attempt=attempt + 1, error=last)
        raise DeliveryError(last, permanent=False)

    async def _post(self, target: Target, headers: dict[str, str], body: bytes) -> int:
        """POSTs to the first vetted address that accepts a connection; returns the status without the body."""
        host = target.url.host
        extensions = {} if _is_address(host) else {"sni_hostname": host}
        failure: httpx.TransportError | None = None
        for address in target.addresses:
            request = self.client.build_request(
                "POST", target.url.copy_with(host=address.split("%", 1)[0]), content=body,
                headers={**headers, "Host": target.url.netloc.decode("ascii")}, extensions=extensions)
            try:
                reply = await self.client.send(request, stream=True)
            except httpx.ConnectError as error:
                failure = error
                continue
            await reply.aclose()
            return reply.status_code
        assert failure is not None
        raise failure


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
