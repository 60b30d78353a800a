"""The OCPP source: one WebSocket listener (``OCPP_LISTEN``) for both protocol versions.

A charger connects to ``/ocpp/{chargerId}`` offering ``ocpp1.6`` or ``ocpp2.0.1``. At the
upgrade it is admitted or refused (``chargers``: a known charger with its password, HTTP
Basic; an unknown one only with ``OCPP_ACCEPT_UNKNOWN``); in relay mode the upstream
connection is opened then too, so the CSMS's own refusal reaches the charger unchanged.
Then the connection is served by ``csms`` or ``relay``. The source stops like the others:
``stop_taking`` closes the listening socket (connected chargers go on until the writer is
done), ``release`` closes their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import asyncpg
import structlog
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from collector.ingest.sink import Sink
from collector.metrics import Metrics
from collector.settings import Settings, SettingsError
from collector.sources.base import SourceHealth
from collector.sources.ocpp.csms import CSMS
from collector.sources.ocpp.naming import CHARGER_ID
from collector.sources.ocpp.passwords import basic_credentials
from collector.sources.ocpp.recorder import Recorder, RecorderSettings
from collector.sources.ocpp.relay import Backlog, Relay

log = structlog.get_logger("collector.ocpp")
SUBPROTOCOLS = ["ocpp2.0.1", "ocpp1.6"]  # both offered: 2.0.1 is picked
PATH_PREFIX = "/ocpp/"


@dataclass(frozen=True, slots=True)
class OcppConfig:
    """The OCPP settings the listener uses, checked together."""

    host: str
    port: int
    mode: str
    upstream_url: str
    accept_unknown: bool
    heartbeat_s: int
    meter_interval_s: int
    commit_timeout_s: float
    relay_backlog: int
    tls: ssl.SSLContext | None
    listed_tags_only: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> OcppConfig | None:
        address = s.ocpp_address
        if address is None:
            return None
        if s.ocpp_mode == "relay" and not s.ocpp_upstream_url:
            raise SettingsError(
                "OCPP_MODE=relay needs OCPP_UPSTREAM_URL (e.g. wss://csms.example/ocpp/{chargerId})"
            )
        if bool(s.ocpp_tls_cert) != bool(s.ocpp_tls_key):
            raise SettingsError("OCPP_TLS_CERT and OCPP_TLS_KEY go together (or neither)")
        tls = None
        if s.ocpp_tls_cert and s.ocpp_tls_key:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                tls.load_cert_chain(s.ocpp_tls_cert, s.ocpp_tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise SettingsError(f"invalid setting OCPP_TLS_CERT/OCPP_TLS_KEY: {exc}") from None
        return cls(
            host=address[0] or "0.0.0.0",  # noqa: S104 - the operator's OCPP_LISTEN
            port=address[1],
            mode=s.ocpp_mode,
            upstream_url=s.ocpp_upstream_url,
            accept_unknown=s.ocpp_accept_unknown,
            heartbeat_s=s.ocpp_heartbeat_s,
            meter_interval_s=s.ocpp_meter_interval_s,
            commit_timeout_s=s.ingest_timeout_s,
            relay_backlog=s.ocpp_relay_backlog,
            tls=tls,
            listed_tags_only=s.ocpp_authorize == "listed",
        )

    def upstream_for(self, charger_id: str) -> str:
        return self.upstream_url.replace("{chargerId}", charger_id)


def charger_of(path: str) -> str | None:
    """The charger id of an upgrade path ``/ocpp/{chargerId}`` (None: not such a path)."""
    path = path.split("?", 1)[0]
    if not path.startswith(PATH_PREFIX):
        return None
    charger_id = path[len(PATH_PREFIX) :].strip("/")
    return charger_id if CHARGER_ID.fullmatch(charger_id) else None


class OcppSource:
    """Chargers over OCPP-J: csms (their back end) or relay (in front of the operator's)."""

    name = "ocpp"

    def __init__(
        self,
        *,
        config: OcppConfig,
        sink: Sink,
        metrics: Metrics,
        open_pool: Callable[[], Awaitable[asyncpg.Pool]],
    ) -> None:
        self.config = config
        self._sink = sink
        self._metrics = metrics
        self._open_pool = open_pool
        self._recorder: Recorder | None = None
        self._server: Server | None = None
        self._released = asyncio.Event()
        self._upstreams: dict[int, ClientConnection] = {}
        self._connections: dict[str, ServerConnection] = {}
        self._recording: set[asyncio.Task[None]] = set()
        self._backlog = Backlog(config.relay_backlog, metrics)
        self.port: int | None = None
        self.last_error: str | None = None

    @property
    def recorder(self) -> Recorder:
        assert self._recorder is not None, "the OCPP source is not running"
        return self._recorder

    async def run(self) -> None:
        c = self.config
        pool = await self._open_pool()
        relay = c.mode == "relay"
        self._recorder = Recorder(
            pool=pool,
            sink=self._sink,
            metrics=self._metrics,
            settings=RecorderSettings(
                wait_for_commit=not relay,
                commit_timeout_s=c.commit_timeout_s,
                offline_after_s=max(120.0, 2.0 * c.heartbeat_s),
                listed_tags_only=c.listed_tags_only,
            ),
        )
        try:
            async with serve(
                self._serve,
                c.host,
                c.port,
                subprotocols=SUBPROTOCOLS,  # type: ignore[arg-type]
                process_request=self._admit,
                ssl=c.tls,
                max_size=1024 * 1024,
                server_header="energy-collector",
            ) as server:
                self._server = server
                self.port = next(iter(server.sockets)).getsockname()[1]
                log.info(
                    "ocpp.listening",
                    address=f"{'wss' if c.tls else 'ws'}://{c.host}:{self.port}{PATH_PREFIX}{{chargerId}}",
                    mode=c.mode,
                    upstream=c.upstream_url or None,
                )
                await self._released.wait()
                server.close(close_connections=True)
                await server.wait_closed()
            for task in list(self._recording):
                task.cancel()
        finally:
            self._server = None
            await pool.close()

    def stop_taking(self) -> None:
        """No new chargers; those connected go on until ``release``."""
        if self._server is not None:
            self._server.close(close_connections=False)

    def release(self) -> None:
        self._released.set()

    def health(self) -> SourceHealth:
        return SourceHealth(self._server is not None, self.last_error)

    @property
    def connected(self) -> int:
        return len(self._connections)

    # --- the upgrade --------------------------------------------------------------------

    async def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        charger_id = charger_of(request.path)
        if charger_id is None:
            return self._refuse(
                connection, HTTPStatus.NOT_FOUND, "bad_path",
                f"connect to {PATH_PREFIX}{{chargerId}} (1-60 letters, digits and . _ : -)",
            )  # fmt: skip
        credentials = basic_credentials(request.headers.get("Authorization"))
        admission = await self.recorder.book.admit(
            charger_id,
            credentials,
            accept_unknown=self.config.accept_unknown,
            check_password=self.config.mode == "csms",
        )
        if not admission.allowed:
            log.warning("ocpp.refused", charger=charger_id, reason=admission.reason)
            status = HTTPStatus.UNAUTHORIZED if admission.known else HTTPStatus.NOT_FOUND
            response = self._refuse(connection, status, admission.reason, admission.reason)
            if status == HTTPStatus.UNAUTHORIZED:
                response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return response
        if self.config.mode == "relay":
            return await self._open_upstream(connection, request, charger_id)
        return None

    def _refuse(
        self, connection: ServerConnection, status: HTTPStatus, reason: str, text: str
    ) -> Response:
        self._metrics.ocpp_refused.labels(reason.split(" (", maxsplit=1)[0]).inc()
        return connection.respond(status, text + "\n")

    async def _open_upstream(
        self, connection: ServerConnection, request: Request, charger_id: str
    ) -> Response | None:
        offered = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip() in SUBPROTOCOLS
        ]
        headers = Headers()
        if "Authorization" in request.headers:  # the CSMS authenticates its chargers
            headers["Authorization"] = request.headers["Authorization"]
        url = self.config.upstream_for(charger_id)
        try:
            upstream = await websockets.connect(
                url,
                subprotocols=offered,  # type: ignore[arg-type]
                additional_headers=headers,
                open_timeout=10,
                max_size=1024 * 1024,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            log.warning("ocpp.upstream_refused", charger=charger_id, status=status)
            self._metrics.ocpp_refused.labels("upstream_refused").inc()
            response = connection.respond(status, f"the CSMS answered {status}\n")
            if "WWW-Authenticate" in exc.response.headers:
                response.headers["WWW-Authenticate"] = exc.response.headers["WWW-Authenticate"]
            return response
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            self.last_error = f"upstream {url}: {exc}"
            log.warning("ocpp.upstream_unreachable", charger=charger_id, error=str(exc))
            return self._refuse(
                connection, HTTPStatus.BAD_GATEWAY, "upstream_unreachable",
                "the CSMS cannot be reached",
            )  # fmt: skip
        self.last_error = None
        self._upstreams[id(connection)] = upstream
        return None

    # --- a connection -------------------------------------------------------------------

    async def _serve(self, connection: ServerConnection) -> None:
        charger_id = charger_of(connection.request.path if connection.request else "") or ""
        protocol = connection.subprotocol or ""
        upstream = self._upstreams.pop(id(connection), None)
        if upstream is not None and upstream.subprotocol != protocol:
            await upstream.close()
            await connection.close(1002, "the CSMS chose another OCPP version")
            return
        previous = self._connections.get(charger_id)
        if previous is not None:  # the charger reconnected: the old socket is dead
            with contextlib.suppress(Exception):
                await previous.close(1000, "replaced by a new connection of this charger")
        self._connections[charger_id] = connection
        self._metrics.ocpp_connected.set(len(self._connections))
        recorder = self.recorder
        log.info("ocpp.connected", charger=charger_id, protocol=protocol, mode=self.config.mode)
        try:
            with contextlib.suppress(Exception):
                await recorder.connected(charger_id, protocol)
            if upstream is not None:
                await self._relay(charger_id, connection, upstream)
            else:
                await self._csms(charger_id, connection, protocol)
        finally:
            if self._connections.get(charger_id) is connection:
                del self._connections[charger_id]
                with contextlib.suppress(Exception):
                    await recorder.disconnected(charger_id)
            self._metrics.ocpp_connected.set(len(self._connections))
            log.info("ocpp.disconnected", charger=charger_id, code=connection.close_code)

    async def _csms(self, charger_id: str, connection: ServerConnection, protocol: str) -> None:
        point: Any = CSMS[protocol](
            charger_id,
            connection,
            self.recorder,
            heartbeat_s=self.config.heartbeat_s,
            meter_interval_s=self.config.meter_interval_s,
        )
        with contextlib.suppress(ConnectionClosed):
            await point.start()

    async def _relay(
        self, charger_id: str, connection: ServerConnection, upstream: ClientConnection
    ) -> None:
        relay = Relay(charger_id, connection, upstream, self.recorder, self._backlog)
        recording = asyncio.create_task(relay.record(), name=f"ocpp-record:{charger_id}")
        self._recording.add(recording)
        recording.add_done_callback(self._recording.discard)
        await relay.run()
