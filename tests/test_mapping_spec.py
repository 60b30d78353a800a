"""SOURCES_FILE checks at load (issue 27): every mistake one line naming file, source, key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.sources.mappings.load import native_patterns
from collector.sources.mappings.spec import SourcesError, load_sources
from collector.sources.mappings.topic import TopicPattern
from collector.sources.mappings.units import to_kwh

GOOD = """
[[source]]
name = "plugs"
topic = "tele/{device}/SENSOR"
kind = "meter"
device_id = "t-{device}"
timestamp = { path = "Time", format = "iso_local", tz = "Europe/Berlin" }
fields = [ { target = "kwhRegisterAc", path = "ENERGY.Total", unit = "kWh" } ]
"""
LOCAL_TIME = '{ path = "Time", format = "iso_local", tz = "Europe/Berlin" }'


def write(tmp_path: Path, text: str, name: str = "sources.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('unit = "kWh"', 'unit = "kwh"'), "fields[0].unit: 'kwh' is not one of Wh, kWh"),
        (('unit = "kWh"', 'unit = "V"'), "is not one of"),
        (('target = "kwhRegisterAc"', 'target = "power"'), "'power' is not a meter field"),
        (('path = "ENERGY.Total"', 'path = "ENERGY.[Total"'), "not a JMESPath expression"),
        (('tz = "Europe/Berlin"', 'tz = "Mars/Base"'), "is not a time zone"),
        ((', tz = "Europe/Berlin"', ""), "iso_local needs tz"),
        (('kind = "meter"', 'kind = "boat"'), "kind:"),
        (('device_id = "t-{device}"', 'device_id = "t-{serial}"'), "{serial} is not a level"),
        (('topic = "tele/{device}/SENSOR"', 'topic = "tele/+/SENSOR"'), "write a captured level"),
        (('name = "plugs"', 'name = "Plugs!"'), "name:"),
        (("[[source]]", "[[source]]\ncolour = 'red'"), "colour: Extra inputs are not permitted"),
        ((LOCAL_TIME, '{ format = "receive" }'), None),  # a register timed receive is fine
        (
            ('{ target = "kwhRegisterAc", path = "ENERGY.Total", unit = "kWh" }',
             '{ target = "kwhConsumedAc", path = "ENERGY.Today", unit = "kWh" }'),
            None,
        ),
    ],
)  # fmt: skip
def test_a_bad_source_is_one_line_naming_it_and_the_key(tmp_path, change, message):
    old, new = change
    text = GOOD.replace(old, new)
    assert text != GOOD
    path = write(tmp_path, text)
    if message is None:
        assert [s.name for s in load_sources(path)] == ["plugs"]
        return
    with pytest.raises(SourcesError) as info:
        load_sources(path)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"SOURCES_FILE {path}: source")
    assert message in line, line


def test_receive_time_may_not_book_interval_energy(tmp_path):
    text = GOOD.replace(LOCAL_TIME, '{ format = "receive" }')
    text = text.replace("kwhRegisterAc", "kwhConsumedAc")
    with pytest.raises(SourcesError, match="timed receive may only map the register"):
        load_sources(write(tmp_path, text))


def test_two_sources_on_one_topic_or_on_the_native_ones_are_refused(tmp_path):
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "a.toml").write_text(GOOD)
    (folder / "b.toml").write_text(GOOD.replace('"plugs"', '"others"').replace("{device}", "{x}"))
    with pytest.raises(SourcesError, match="can match the same topics as source 'plugs'"):
        load_sources(str(folder))
    native = GOOD.replace("tele/{device}/SENSOR", "meters/{device}/reading")
    with pytest.raises(SourcesError, match="the native topics"):
        load_sources(write(tmp_path, native), native_patterns(""))
    # under a prefix, the same topic is no longer the native one
    assert load_sources(write(tmp_path, native, "p.toml"), native_patterns("site-1"))


def test_empty_files_and_folders_are_errors(tmp_path):
    with pytest.raises(SourcesError, match="no \\[\\[source\\]\\]"):
        load_sources(write(tmp_path, "# nothing yet\n"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourcesError, match="a folder without"):
        load_sources(str(tmp_path / "empty"))


def test_units_scale_exactly():
    assert to_kwh(1.1, "Wh") == 0.0011  # not 0.0011000000000000001
    assert to_kwh("60000", "Wmin") == 1.0
    assert to_kwh(1234567, "mWh") == 1.234567
    assert to_kwh(0.0042, "MWh") == 4.2
    assert TopicPattern("a/{x}/b").overlaps(TopicPattern("a/c/{y}"))
    assert not TopicPattern("a/{x}/b").overlaps(TopicPattern("a/{x}/c"))


def test_run_and_check_stop_at_a_bad_file_with_one_line(tmp_path):
    bad = write(tmp_path, GOOD.replace('unit = "kWh"', 'unit = "kwh"'))
    for command in ("run", "check"):
        result = subprocess.run(
            [sys.executable, "-m", "collector", command],
            env={"SOURCES_FILE": bad, "PATH": "/usr/bin:/bin", "PORT": "0"},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "source 'plugs': fields[0].unit" in lines[0], result.stderr
