"""The dashboard over HTTP: figures, filters, fragments, device pages, errors and tokens.

(tests/test_dashboard_browser.py looks at the same pages in a real browser.)
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime

import httpx
import pytest
import uvicorn

from api.app import create_app
from collector.settings import load_settings
from tests.fleet_data import EXPECTED, load_known_fleet
from tests.helpers import eventually
from tests.services import free_port

pytestmark = pytest.mark.services

READ = "dashboard-read-token-0001"
INGEST = "dashboard-ingest-token-01"


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', html)
    assert match, f"no #{element_id} in the page"
    return match[1].strip()


def rows(html: str) -> list[str]:
    return re.findall(r'<tr class="[^"]*" data-vehicle="([^"]+)"', html)


def row_html(html: str, vehicle: str) -> str:
    match = re.search(rf'(<tr class="[^"]*" data-vehicle="{vehicle}">.*?</tr>)', html, re.S)
    assert match, f"no row for {vehicle}"
    return match[1]


@pytest.fixture
async def fleet(db, api) -> datetime:
    return await load_known_fleet(db)


async def test_fleet_page_shows_the_known_figures(api, fleet):
    r = await api.get("/dashboard")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert text_of(html, "total-ac") == EXPECTED["ac"]
    assert text_of(html, "total-dc") == EXPECTED["dc"]
    assert text_of(html, "total-efficiency") == EXPECTED["efficiency"]
    assert text_of(html, "meters-reporting") == "4 / 4"
    assert text_of(html, "vehicles-reporting") == "5 / 5"
    assert text_of(html, "meters-silent") == "1 silent &gt; 15 min"
    assert text_of(html, "vehicles-silent") == "1 silent &gt; 15 min"
    # Worst first: the anomaly, the low efficiency, no data, then the normal ones.
    assert rows(html) == ["VX", "VL", "VU", "VG", "VS"]
    for vehicle, status in EXPECTED["status"].items():
        row = row_html(html, vehicle)
        assert f">{status}</span>" in row
        assert ("badge-silent" in row) == (vehicle in EXPECTED["silent"])
    vl = row_html(html, "VL")
    assert 'class="status-low_efficiency"' in vl  # the row stands out
    assert 'href="/dashboard/meters/mB"' in vl and ">0.700<" in vl and " 40.0</td>" in vl


async def test_the_same_figures_as_the_api(api, fleet):
    summary = (await api.get("/v1/analytics/fleet")).json()
    html = (await api.get("/dashboard")).text
    assert text_of(html, "total-ac") == f"{summary['totalKwhConsumedAc']:,.1f}"
    assert text_of(html, "total-efficiency") == f"{summary['efficiencyOverall']:.3f}"
    assert [v["vehicleId"] for v in summary["lowEfficiencyVehicles"]] == ["VL"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"show": "low_efficiency"}, ["VL"]),
        ({"show": "anomaly"}, ["VX"]),
        ({"show": "silent"}, ["VS"]),
        ({"q": "mb"}, ["VL"]),
        ({"sort": "efficiency", "order": "desc"}, ["VX", "VG", "VS", "VL", "VU"]),
        ({"sort": "soc"}, ["VU", "VL", "VS", "VX", "VG"]),
    ],
)
async def test_filter_search_and_sort(api, fleet, params, expected):
    html = (await api.get("/dashboard", params=params)).text
    assert rows(html) == expected


async def test_sort_links_toggle_the_order_and_keep_the_filter(api, fleet):
    html = (await api.get("/dashboard", params={"show": "normal", "sort": "soc"})).text
    assert 'href="/dashboard?show=normal&amp;sort=soc&amp;order=desc"' in html
    assert 'aria-sort="ascending"' in html


async def test_a_fragment_is_the_live_part_only(api, fleet):
    r = await api.get("/dashboard", headers={"X-Dashboard-Fragment": "1"})
    assert r.status_code == 200
    assert "<html" not in r.text and 'id="total-ac"' in r.text and rows(r.text)


async def test_bad_parameters_say_what_is_wrong(api, fleet):
    r = await api.get("/dashboard", params={"show": "broken"})
    assert r.status_code == 400
    assert "show must be one of all, anomaly" in r.text and "<html" in r.text
    r = await api.get("/dashboard/vehicles/VL", params={"window": "2y"})
    assert r.status_code == 400 and "window must be one of 6h, 24h, 7d, 30d" in r.text


async def test_vehicle_page(api, fleet):
    r = await api.get("/dashboard/vehicles/VL")
    assert r.status_code == 200
    html = r.text
    assert text_of(html, "status") == "low efficiency"
    assert text_of(html, "perf-ac") == "18.00"
    assert text_of(html, "perf-dc") == "12.60"
    assert text_of(html, "perf-efficiency") == "0.700"
    assert text_of(html, "soc") == "40.0"
    assert text_of(html, "linked-meter") == "mB"
    chart = json.loads(re.search(r'id="chart-data">(.*?)</script>', html, re.S)[1])
    assert chart["kind"] == "vehicle" and len(chart["t"]) in (24, 25)  # hourly over 24 h
    assert sum(chart["ac"]) == pytest.approx(18.0)
    assert sum(chart["dc"]) == pytest.approx(12.6)
    assert {round(e, 3) for e in chart["efficiency"] if e is not None} == {0.7}
    week = (await api.get("/dashboard/vehicles/VL", params={"window": "7d"})).text
    assert len(json.loads(re.search(r'id="chart-data">(.*?)</script>', week, re.S)[1])["t"]) in (
        56,
        57,
    )


async def test_a_vehicle_never_linked_says_so(api, fleet):
    html = (await api.get("/dashboard/vehicles/VU")).text
    assert "Never linked to a meter" in html
    assert text_of(html, "status") == "insufficient data"


async def test_meter_page(api, fleet):
    r = await api.get("/dashboard/meters/mB")
    assert r.status_code == 200
    html = r.text
    assert text_of(html, "window-kwh") == "18.00"
    assert text_of(html, "linked-vehicle") == "VL"
    assert 'href="/dashboard/vehicles/VL"' in html
    chart = json.loads(re.search(r'id="chart-data">(.*?)</script>', html, re.S)[1])
    assert sum(chart["ac"]) == pytest.approx(18.0)
    assert "silent" not in text_of(html, "age")
    assert "badge-silent" in (await api.get("/dashboard/meters/mD")).text


async def test_unknown_devices_get_a_page_that_says_so(api, fleet):
    r = await api.get("/dashboard/vehicles/nobody")
    assert r.status_code == 404
    assert "vehicle &#39;nobody&#39; has never reported nor been linked" in r.text
    assert "<html" in r.text and "Back to the fleet" in r.text
    r = await api.get("/dashboard/meters/bad%20id")
    assert r.status_code == 400


async def test_an_empty_database_says_no_readings_yet(db, api):
    html = (await api.get("/dashboard")).text
    assert "No readings yet" in html and "energy-collector simulate" in html
    assert text_of(html, "total-efficiency") == "–"


async def test_the_root_leads_to_the_dashboard(api):
    r = await api.get("/", follow_redirects=True)
    assert r.status_code == 200 and str(r.url).endswith("/dashboard")


async def test_static_files_ship_with_the_package(api):
    for path in (
        "/static/uplot/uPlot.iife.min.js",
        "/static/uplot/uPlot.min.css",
        "/static/dashboard/dashboard.js",
        "/static/dashboard/dashboard.css",
    ):
        assert (await api.get(path)).status_code == 200, path


# --- tokens ---------------------------------------------------------------------------------


@pytest.fixture
async def guarded(db, start_collector):
    service = await start_collector(read_tokens=READ, ingest_tokens=INGEST)
    await load_known_fleet(db)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{service.http_port}", timeout=30
    ) as client:
        yield client


async def test_with_read_tokens_the_pages_want_one(guarded):
    r = await guarded.get("/dashboard/vehicles/VL?window=6h")
    assert r.status_code == 303
    assert (
        r.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fvehicles%2FVL%3Fwindow%3D6h"
    )
    login = await guarded.get(r.headers["location"])
    assert login.status_code == 200 and 'name="token"' in login.text
    # The refresh of an open page learns it was signed out.
    r = await guarded.get("/dashboard", headers={"X-Dashboard-Fragment": "1"})
    assert r.status_code == 401
    # A bearer header works as for the API; a wrong one is an error, not a login page.
    ok = await guarded.get("/dashboard", headers={"Authorization": f"Bearer {READ}"})
    assert ok.status_code == 200 and rows(ok.text)
    bad = await guarded.get("/dashboard", headers={"Authorization": f"Bearer {INGEST}"})
    assert bad.status_code == 403


async def test_login_keeps_the_token_in_an_http_only_cookie(guarded):
    wrong = await guarded.post("/dashboard/login", data={"token": INGEST, "next": "/dashboard"})
    assert wrong.status_code == 401 and "That token may not read." in wrong.text
    assert "set-cookie" not in wrong.headers
    r = await guarded.post("/dashboard/login", data={"token": READ, "next": "/dashboard/meters/mB"})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/meters/mB"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    page = await guarded.get("/dashboard/meters/mB")  # the client keeps the cookie
    assert page.status_code == 200 and "Sign out" in page.text
    assert (await guarded.get("/v1/analytics/fleet")).status_code == 401  # not the API's
    out = await guarded.post("/dashboard/logout")
    assert out.status_code == 303
    assert (await guarded.get("/dashboard")).status_code == 303


async def test_login_never_sends_you_to_another_site(guarded):
    for target in ("https://evil.example/", "//evil.example/dashboard", "/v1/links"):
        r = await guarded.post("/dashboard/login", data={"token": READ, "next": target})
        assert r.headers["location"] == "/dashboard", target


# --- the database down ----------------------------------------------------------------------


async def test_an_unreachable_database_is_a_page_that_says_so():
    port = free_port()
    settings = load_settings(
        {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/energy"}, env_file=None
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the API did not start"
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/dashboard")
            assert r.status_code == 503
            assert "Database unreachable" in r.text and "energy-collector check" in r.text
            assert "<html" in r.text
            fragment = await client.get("/dashboard", headers={"X-Dashboard-Fragment": "1"})
            assert fragment.status_code == 503 and "<html" not in fragment.text
            assert 'id="message"' in fragment.text
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_the_fleet_page_lists_what_fires_and_a_vehicle_page_its_alerts(api, fleet):
    api.service.alerts.wake.set()  # evaluate now, not at the next interval

    async def firing() -> set[tuple[str, str]]:
        body = (await api.get("/v1/alerts", params={"state": "firing"})).json()
        return {(a["rule"], a["deviceId"]) for a in body["alerts"]}

    await eventually(
        firing, lambda f: {("low_efficiency", "VL"), ("efficiency_anomaly", "VX")} <= f, 15
    )
    html = (await api.get("/dashboard")).text
    panel = html.split('id="alerts-firing"', 1)[1].split("</section>", 1)[0]
    count = int(text_of(html, "alerts-firing-count"))
    assert count == len(await firing())
    assert 'href="/dashboard/vehicles/VL"' in panel and "low efficiency" in panel
    assert 'href="/dashboard/vehicles/VX"' in panel and "efficiency anomaly" in panel
    page = (await api.get("/dashboard/vehicles/VL")).text
    history = page.split('id="alert-history"', 1)[1].split("</table>", 1)[0]
    assert "low efficiency" in history and "badge-alert-firing" in history
    healthy = (await api.get("/dashboard/vehicles/VG")).text
    assert "No alert so far." in healthy


async def test_the_alerts_page_filters_orders_what_needs_action_first_and_gives_units(api, fleet):
    """Issue 26: the panel showed ten rows of one rule and no alerts page; values had no
    unit. The page filters by state, rule, severity and device; an acknowledged alert
    goes after the ones still to act on; values carry their unit; one zone, named."""
    api.service.alerts.wake.set()

    async def firing() -> list[dict]:
        return (await api.get("/v1/alerts", params={"state": "firing"})).json()["alerts"]

    await eventually(firing, lambda f: {"VL", "VX"} <= {a["deviceId"] for a in f}, 15)
    page = await api.get("/dashboard/alerts")
    assert page.status_code == 200
    rows = page.text.split('id="alerts-list"', 1)[1].split("</table>", 1)[0]
    assert "low efficiency" in rows and " DC/AC" in rows and 'data-ack="' in rows
    assert "times in UTC, 24-hour" in page.text
    only = (await api.get("/dashboard/alerts", params={"rule": "low_efficiency"})).text
    listed = only.split('id="alerts-list"', 1)[1].split("</table>", 1)[0]
    assert "low efficiency" in listed and "efficiency anomaly" not in listed
    nothing = (await api.get("/dashboard/alerts", params={"device": "nobody"})).text
    assert 'id="alerts-none"' in nothing
    bad = await api.get("/dashboard/alerts", params={"state": "bogus"})
    assert bad.status_code == 400 and "state must be one of" in bad.text
    # acknowledged: shown as such, and after the ones still to act on
    first = (await firing())[0]
    acked = await api.post(f"/v1/alerts/{first['id']}/acknowledge", json={"by": "ops"})
    assert acked.status_code == 200
    order = [a["id"] for a in await firing()]
    assert order[-1] == first["id"] and len(order) >= 2
    page = (await api.get("/dashboard/alerts", params={"state": "firing"})).text
    assert "acknowledged by ops" in page
    assert page.index(f'data-alert="{order[0]}"') < page.index(f'data-alert="{first["id"]}"')
    panel = (await api.get("/dashboard")).text.split('id="alerts-firing"', 1)[1]
    assert 'id="alerts-by-rule"' in panel and 'href="/dashboard/alerts' in panel


async def test_times_are_shown_in_the_display_time_zone(start_collector, fleet):
    service = await start_collector(display_time_zone="America/St_Johns")  # UTC-3:30
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as client:
        page = (await client.get("/dashboard/vehicles/VL")).text
    assert "times in America/St_Johns, 24-hour" in page
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d NST", page), "no time in the zone"
    assert '"zone": "America/St_Johns"' in page or '"zone":"America/St_Johns"' in page
