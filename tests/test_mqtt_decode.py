"""The PUBLISH decoder against hand-made packets and against paho's own decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion

from collector.sources.mqtt.client import decode_publishes


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(
    topic: bytes,
    payload: bytes,
    *,
    qos: int = 1,
    mid: int = 1,
    v5: bool = False,
    props: bytes = b"",
) -> bytes:
    var = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    if v5:
        var += varint(len(props)) + props
    body = var + payload
    return bytes([0x30 | (qos << 1)]) + varint(len(body)) + body


PINGRESP = b"\xd0\x00"


def test_decodes_every_complete_publish():
    data = publish(b"meters/m1/reading", b'{"a":1}', mid=7) + publish(b"t", b"", qos=0)
    messages, pos = decode_publishes(data, 0, False, 100)
    assert messages == [("meters/m1/reading", b'{"a":1}', 7, 1), ("t", b"", 0, 0)]
    assert pos == len(data)


def test_skips_mqtt5_properties():
    props = b"\x02\x00\x00\x00\x3c" + b"\x03\x00\x10application/json"  # expiry, content type
    data = publish(b"x/y", b"payload", mid=300, v5=True, props=props)
    assert decode_publishes(data, 0, True, 10) == ([("x/y", b"payload", 300, 1)], len(data))


@pytest.mark.parametrize(
    ("rest", "v5"),
    [
        (PINGRESP + publish(b"b", b"2"), False),  # another packet type
        (publish(b"b", b"2", qos=2), False),  # QoS 2
        (publish(b"b", b"2")[:-1], False),  # cut at the buffer's end
        (publish(b"b", b"2")[:1], False),  # only the header byte
        (publish(b"", b"2", v5=True), True),  # a topic alias (empty topic)
    ],
    ids=["other packet", "qos 2", "cut", "header only", "topic alias"],
)
def test_stops_at_what_paho_must_handle(rest, v5):
    first = publish(b"a", b"1", v5=v5)
    messages, pos = decode_publishes(first + rest, 0, v5, 10)
    assert messages == [("a", b"1", 1, 1)]
    assert pos == len(first)


def test_respects_the_limit_and_the_start_position():
    packets = [publish(b"t", bytes([i]), mid=i + 1) for i in range(5)]
    data = b"junk" + b"".join(packets)
    messages, pos = decode_publishes(data, 4, False, 2)
    assert [m[2] for m in messages] == [1, 2]
    assert pos == 4 + len(packets[0]) + len(packets[1])


def test_long_remaining_length():
    payload = b"x" * 300_000  # a four-byte... three-byte remaining length
    data = publish(b"big", payload)
    assert decode_publishes(data, 0, False, 1)[0][0][1] == payload


@given(
    topic=st.text(min_size=1, max_size=80).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=600),
    qos=st.integers(0, 1),
    mid=st.integers(1, 65535),
    v5=st.booleans(),
    props=st.sampled_from([b"", b"\x02\x00\x00\x00\x3c", b"\x23\x00\x05"]),
)
def test_agrees_with_paho(topic, payload, qos, mid, v5, props):
    raw = publish(topic.encode(), payload, qos=qos, mid=mid, v5=v5, props=props)
    (message,), pos = decode_publishes(raw + PINGRESP, 0, v5, 5)
    assert pos == len(raw)
    body = 1  # paho decodes what follows the fixed header (type byte, remaining length)
    while raw[body] & 0x80:
        body += 1
    version = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    theirs = _packet.decode_publish(raw[0], raw[body + 1 :], version)
    assert message == (theirs.topic.decode(), theirs.payload, theirs.mid, theirs.qos)
