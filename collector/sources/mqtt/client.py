"""An aiomqtt client that hands messages over in bulk and acknowledges them only when told.

This module is the only place that reaches under aiomqtt 2.5 into paho-mqtt 2.x (pinned to
the minor versions it was written against):

* **Manual acknowledgement.** aiomqtt has no public manual acknowledgement and paho sends
  PUBACK on receipt, so a crash between receipt and commit would lose data.
  ``manual_ack_set(True)`` stops that; :meth:`BulkAckClient.ack` sends the PUBACKs after the
  commit, in receive order, as one write.
* **Bulk hand-over.** ``async for message in client.messages`` costs a task and an
  ``asyncio.wait`` per message. Here incoming messages are appended to a list and
  :meth:`BulkAckClient.take` returns every message that is ready at once. The list is never
  capped: memory is bounded by the broker's in-flight window (QoS 1 messages are only sent
  while fewer than the window are unacked); a capped queue would drop messages that then are
  never acknowledged.
* **Lean reads.** For every message paho builds an ``MQTTMessage`` (whose
  ``MQTTMessageInfo`` allocates a ``threading.Condition``), formats a debug line, walks a
  topic matcher and reads the socket three times: about 40 % of the collector's CPU in a
  profile. The socket is wrapped to read 256 KB at a time, and complete QoS 0/1 PUBLISH
  packets are decoded from that buffer in one loop (:func:`decode_publishes`) into
  ``(topic, payload, mid, flags)`` tuples (flags: the QoS and the retain flag). Anything
  else (other packets, a packet cut at the buffer's end, QoS 2) goes through paho as before,
  reading from the same buffer; a PUBLISH that reaches paho is decoded by
  :meth:`BulkAckClient._handle_publish` the same way. The client registers this reader
  itself (what aiomqtt's ``_on_socket_open`` does, with our callback).
* **Our own window.** Memory must not depend on the broker: Mosquitto 2.0.11 keeps to the
  in-flight window (Receive Maximum / ``max_inflight_messages``) until the window has filled
  once and a burst of PUBACKs comes back, then sends far past it (measured: 61,848 unacked
  with a window of 10,000). So the client counts the messages it holds (received, not yet
  acknowledged) and stops reading the socket at ``max_held``; TCP backpressure then keeps
  the rest in the broker. Reading resumes below 3/4 of the limit.

One client object serves one connection. Acknowledgements are only valid on the connection
that received the message (packet ids are reused on the next one), so :meth:`ack` does nothing
once this connection is gone; the broker then redelivers those messages to the next session,
and the history keys absorb the copies.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Sequence
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes

#: A received PUBLISH: (topic, payload, packet id, flags): flags is the QoS, plus
#: ``RETAINED`` when the broker sent it as a retained message (old state, at subscribe).
Inbound = tuple[str, bytes, int, int]
RETAINED = 4
QOS = 3

_PUBACK_HEADER = PacketTypes.PUBACK << 4
#: A PUBACK as a 32-bit word without its packet id (fixed header, remaining length 2).
_PUBACK_WORD = (_PUBACK_HEADER << 24) | (2 << 16)
_READ_SIZE = 256 * 1024


class MqttDisconnected(aiomqtt.MqttError):
    """The connection this client held is gone; reconnect with a new client."""


class BufferedSocket:
    """Wraps paho's socket: small ``recv()`` calls are served from one large read."""

    __slots__ = ("_buf", "_eof", "_pos", "_sock", "hold")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._eof = False
        #: Reading is paused: no refill from the socket, and pending() says 0.
        self.hold = False

    def recv(self, size: int) -> bytes:
        buf: bytes = self._buf
        pos = self._pos
        if pos >= len(buf):
            if self._eof:
                return b""  # connection closed: paho sees it and reports it
            if self.hold:
                raise BlockingIOError
            buf = self._sock.recv(_READ_SIZE)  # raises BlockingIOError when nothing is there
            if not buf:
                return b""
            self._buf, pos = buf, 0
        chunk = buf[pos : pos + size]
        self._pos = pos + len(chunk)
        return chunk

    def fill(self) -> bool:
        """Have unread bytes buffered, reading the socket once if needed; False if none."""
        if self._pos < len(self._buf):
            return True
        if self.hold or self._eof:
            return False
        try:
            buf = self._sock.recv(_READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        if not buf:
            self._eof = True  # left for paho's next recv(), which handles a closed connection
            return False
        self._buf, self._pos = buf, 0
        return True

    def pending(self) -> int:
        """Bytes read from the network and not handed to paho yet.

        aiomqtt's read callback keeps reading while this is above zero; while reading is
        paused it says 0, so decoding stops after the current packet.
        """
        if self.hold:
            return 0
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def decode_publishes(  # noqa: PLR0912, PLR0915 - one loop, inlined on purpose (per message)
    buf: bytes, pos: int, v5: bool, limit: int
) -> tuple[list[Inbound], int]:
    """Decode complete QoS 0/1 PUBLISH packets from ``buf[pos:]``, at most ``limit``.

    Stops at the first thing it leaves to paho: another packet type, QoS 2, an incomplete
    packet, a topic alias (empty topic), anything malformed. Returns the messages and the
    position after the last one decoded.
    """
    out: list[Inbound] = []
    append = out.append
    end = len(buf)
    count = 0
    while pos < end and count < limit:
        header = buf[pos]
        qos = (header >> 1) & 3
        if header >> 4 != 3 or qos > 1:
            break
        # The remaining length: one or two bytes for any reading (fast), up to four.
        i = pos + 1
        if i < end and buf[i] < 0x80:
            length, i = buf[i], i + 1
        elif i + 1 < end and buf[i + 1] < 0x80:
            length, i = (buf[i] & 0x7F) | (buf[i + 1] << 7), i + 2
        else:
            length, shift = 0, 0
            while i < end and shift < 28:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                break  # length incomplete (or over 4 bytes: malformed)
        stop = i + length
        if stop > end or length < 2:
            break
        p = i + 2 + ((buf[i] << 8) | buf[i + 1])
        if p == i + 2 or p + 2 * qos > stop:
            break
        topic = buf[i + 2 : p].decode("utf-8", "replace")
        mid = 0
        if qos:
            mid = (buf[p] << 8) | buf[p + 1]
            p += 2
        if v5:  # skip the properties: their length (a variable-byte integer), then them
            if p < stop and buf[p] == 0:  # none, the usual case
                p += 1
            else:
                plen = pshift = 0
                while p < stop:
                    byte = buf[p]
                    p += 1
                    plen |= (byte & 0x7F) << pshift
                    pshift += 7
                    if not byte & 0x80:
                        break
                p += plen
                if p > stop:
                    break
        append((topic, buf[p:stop], mid, qos | (header & 1) << 2))
        count += 1
        pos = stop
    return out, pos


class BulkAckClient(aiomqtt.Client):
    """aiomqtt client with bulk message hand-over and manual, in-order PUBACKs."""

    def __init__(self, hostname: str, *, max_held: int = 10_000, **kwargs: Any) -> None:
        super().__init__(hostname, **kwargs)
        self._inbox: list[Inbound] = []
        self._ready = asyncio.Event()
        self._woken = False
        self._max_held = max_held
        self._resume_below = max(1, max_held * 3 // 4)
        self._held = 0  # received and not acknowledged (any QoS)
        self._paused = False
        self._fd = -1
        client = self._client
        client.manual_ack_set(True)
        self._v5 = client._protocol == paho.MQTTv5
        self._paho_handle_publish = client._handle_publish
        # paho dispatches PUBLISH packets to self._handle_publish(); shadow it per instance.
        client._handle_publish = self._handle_publish  # type: ignore[method-assign]
        # What still goes through paho (QoS 2) arrives here, into the same inbox.
        client.on_message = self._on_paho_message

    def _on_paho_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        flags = msg.qos | (RETAINED if msg.retain else 0)
        self._received((msg.topic, bytes(msg.payload), msg.mid, flags))

    def _received(self, message: Inbound) -> None:
        self._inbox.append(message)
        self._held += 1
        if self._held >= self._max_held and not self._paused:
            self._pause_reading()
        if not self._ready.is_set():
            self._ready.set()

    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        # Runs in paho's connect() (an executor thread), before CONNECT is sent. What
        # aiomqtt's own version does (register a reader, start the keepalive task), with our
        # reader in place of its callback.
        self._client._sock = BufferedSocket(sock)
        self._fd = sock.fileno()
        self._loop.call_soon_threadsafe(self._loop.add_reader, self._fd, self._on_readable)
        self._loop.call_soon_threadsafe(self._start_misc_task)

    def _start_misc_task(self) -> None:
        self._misc_task = self._loop.create_task(self._misc_loop())

    @property
    def reading_paused(self) -> bool:
        return self._paused

    def _pause_reading(self) -> None:
        # Bytes already read stay in the buffer until reading resumes.
        self._paused = True
        sock = self._client._sock
        if isinstance(sock, BufferedSocket):
            sock.hold = True
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)

    def _resume_reading(self) -> None:
        self._paused = False
        sock = self._client._sock
        if isinstance(sock, BufferedSocket):
            sock.hold = False
        if self._fd >= 0 and sock is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._on_readable()  # bytes may already wait in the read buffer

    def _on_readable(self) -> None:
        """Read what the socket has: PUBLISH packets here, anything else through paho."""
        client = self._client
        try:
            while not self._paused:
                sock = client._sock
                if not isinstance(sock, BufferedSocket):  # gone (None), or not open yet
                    return
                if client._in_packet["command"] == 0 and sock.fill():  # between packets
                    self._decode(sock)
                    if self._paused:
                        return
                client.loop_read()  # the next packet (or part of it) that was not ours
                if not isinstance(client._sock, BufferedSocket) or client._sock.pending() <= 0:
                    break
        except Exception as exc:  # a broken connection: report it like aiomqtt does
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def _decode(self, sock: BufferedSocket) -> None:
        messages, sock._pos = decode_publishes(
            sock._buf, sock._pos, self._v5, max(1, self._max_held - self._held)
        )
        if not messages:
            return
        self._inbox.extend(messages)
        self._held += len(messages)
        client = self._client
        with client._msgtime_mutex:  # paho's keepalive watches when bytes last came in
            client._last_bytes_received = paho.time_func()
        if self._held >= self._max_held and not self._paused:
            self._pause_reading()
        if not self._ready.is_set():
            self._ready.set()

    def _handle_publish(self) -> paho.MQTTErrorCode:
        """Decode a QoS 0/1 PUBLISH into the inbox (paho handles QoS 2 and errors)."""
        packet = self._client._in_packet
        qos = (packet["command"] & 0x06) >> 1
        data = packet["packet"]
        topic_len = (data[0] << 8) | data[1]
        pos = 2 + topic_len
        if qos == 2 or topic_len == 0 or len(data) < pos + 2 * (qos > 0):
            return self._paho_handle_publish()
        topic = data[2:pos].decode("utf-8", "replace")
        mid = 0
        if qos:
            mid = (data[pos] << 8) | data[pos + 1]
            pos += 2
        if self._v5:  # skip the properties: a variable-byte length, then the properties
            length = shift = 0
            while True:
                if pos >= len(data):
                    return self._paho_handle_publish()
                byte = data[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            pos += length
        retained = (packet["command"] & 1) << 2
        self._received((topic, bytes(data[pos:]), mid, qos | retained))
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    async def __aenter__(self) -> BulkAckClient:
        await super().__aenter__()
        # Wake take() when the connection drops, so the caller notices without polling.
        self._disconnected.add_done_callback(lambda _fut: self._ready.set())
        return self

    @property
    def connected(self) -> bool:
        return self._connected.done() and not self._disconnected.done()

    @property
    def pending(self) -> int:
        """Messages received and not yet taken."""
        return len(self._inbox)

    @property
    def held(self) -> int:
        """Messages received and not yet acknowledged."""
        return self._held

    def wake(self) -> None:
        """Make a waiting :meth:`take` or :meth:`wait_woken` return (used to stop)."""
        self._woken = True
        self._ready.set()

    async def take(self) -> list[Inbound]:
        """Wait for messages and return all that are ready, in receive order.

        Returns ``[]`` if :meth:`wake` was called. Raises ``MqttDisconnected`` once the
        connection is gone and nothing is left.
        """
        while not self._inbox:
            self._raise_if_disconnected()
            if self._woken:
                self._woken = False
                return []
            self._ready.clear()
            await self._ready.wait()
        batch, self._inbox = self._inbox, []
        return batch

    async def wait_woken(self) -> None:
        """Wait for :meth:`wake` (new messages are left in the inbox, unacknowledged)."""
        while not self._woken:
            self._raise_if_disconnected()
            self._ready.clear()
            await self._ready.wait()
        self._woken = False

    def _raise_if_disconnected(self) -> None:
        fut = self._disconnected
        if fut.done():
            cause = None if fut.cancelled() else fut.exception()
            raise MqttDisconnected("disconnected from the broker") from cause

    def ack(self, messages: Sequence[Inbound]) -> bool:
        """Send PUBACK for every QoS 1 message in ``messages``, in order, as one write.

        Returns False (and sends nothing) when this connection is gone: the broker will
        redeliver the messages on the next connection.
        """
        if not self.connected:
            return False
        # Every PUBACK is four bytes: 0x40, 2, the packet id; packed at once, big-endian.
        mids = [_PUBACK_WORD | m[2] for m in messages if m[3] & QOS == 1]
        data = struct.pack(f">{len(mids)}I", *mids)
        if data:
            # paho's own _send_puback queues one 4-byte packet per call; queueing them joined
            # is the same bytes on the wire in one send().
            self._client._packet_queue(_PUBACK_HEADER, data, 0, 0)
        for _topic, _payload, mid, flags in messages:
            if flags & QOS == 2:  # only if a broker sends QoS 2 to our QoS 1 subscription
                self._client.ack(mid, 2)
        self._held -= len(messages)
        if self._paused and self._held < self._resume_below:
            self._resume_reading()
        return True
