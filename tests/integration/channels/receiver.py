"""A webhook receiver for tests: a small asyncio HTTP/1.1 server on 127.0.0.1 that fails a share of calls.

It checks every signature, deduplicates by delivery id, and keeps an upserted table by each body's primary key,
applying deliveries in the order they first arrive, as a real receiver would.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

from services.gateway.destinations import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


@dataclass
class Receiver:
    secret: str
    failure_rate: float = 0.0
    status_override: int | None = None
    host: str = "127.0.0.1"
    redirect_to: str | None = None          # answer every call with a 302 to this URL (and a body to leak)
    calls: int = 0
    failures: int = 0
    bad_signatures: int = 0
    arrivals: Counter = field(default_factory=Counter)          # delivery id -> times stored (before dedupe)
    deliveries: dict[str, list[dict]] = field(default_factory=dict)   # delivery id -> rows, first arrival
    table: dict[tuple, dict] = field(default_factory=dict)      # primary key values -> latest row
    _server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        port = self._server.sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}/hooks/tailor"

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _decide(self, body: bytes, headers: dict[str, str]) -> int:
        """Half of the failures drop the call, the other half store it and then lose the answer."""
        self.calls += 1
        if self.status_override is not None:
            return self.status_override
        # Every ten calls draw 0.0, 0.1, ... 0.9 once each, in a fixed shuffled order: exactly the rate fails.
        draw = (self.calls * 7 % 10) / 10
        if draw < self.failure_rate / 2:
            self.failures += 1
            return 503
        if not verify(self.secret, headers.get(TIMESTAMP_HEADER.lower(), ""), body,
                      headers.get(SIGNATURE_HEADER.lower(), "")):
            self.bad_signatures += 1
            return 401
        delivery_id = headers[DELIVERY_ID_HEADER.lower()]
        self.arrivals[delivery_id] += 1
        if delivery_id not in self.deliveries:
            payload = json.loads(body)
            self.deliveries[delivery_id] = payload["rows"]
            for row in payload["rows"]:
                self.table[tuple(row[k] for k in payload["primary_key"])] = row
        if draw < self.failure_rate:
            self.failures += 1
            return 500
        return 200

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.redirect_to is not None:
                    self.calls += 1
                    leak = b"internal data the tenant must not read"
                    writer.write(f"HTTP/1.1 302 Found\r\nLocation: {self.redirect_to}\r\n"
                                 f"Content-Length: {len(leak)}\r\n\r\n".encode() + leak)
                    await writer.drain()
                    continue
                status = self._decide(body, headers)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
