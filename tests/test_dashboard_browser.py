"""The dashboard in a real browser: Debian's chromium, driven by Selenium through chromedriver.

The collector runs in this process (its API on a real port); the browser's steps run in a
thread so the event loop keeps serving the pages. Screenshots are checked (size, not
blank); with SCREENSHOT_DIR set, the fleet page of a simulated fleet is also written there
(docs/dashboard-fleet.png in the README is made that way: `make screenshots`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from api.queries import links as q
from collector.tools.fleet import Fleet
from tests.fleet_data import EXPECTED, load_known_fleet, partitions_ready
from tests.helpers import load

pytestmark = [pytest.mark.browser, pytest.mark.services]

WAIT_S = 15


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, (
        "Debian's chromium and chromium-driver are missing: `make test` installs them"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    # An explicit driver: Selenium Manager downloads nothing.
    driver_ = webdriver.Chrome(service=Service(driver), options=options)
    driver_.set_page_load_timeout(30)
    try:
        yield driver_
    finally:
        driver_.quit()


def wait(browser: WebDriver, condition: Callable[[WebDriver], object], what: str):
    try:
        return WebDriverWait(browser, WAIT_S).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} did not happen within {WAIT_S} s") from None


# Read and click through JavaScript, in one step each: the page refreshes itself every
# second here, and an element found in one call may be replaced before the next.
def text(browser: WebDriver, css: str) -> str:
    value = browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.innerText.trim();", css
    )
    assert value is not None, f"nothing matches {css}"
    return value


def table_rows(browser: WebDriver) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll('tr[data-vehicle]')].map(e => e.dataset.vehicle);"
    )


def background(browser: WebDriver, css: str) -> str:
    return browser.execute_script(
        "return getComputedStyle(document.querySelector(arguments[0])).backgroundColor;", css
    )


def click(browser: WebDriver, css: str) -> None:
    assert browser.execute_script(
        "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;", css
    ), f"nothing to click at {css}"


def page_overflow(browser: WebDriver) -> int:
    """How many pixels the page is wider than the window (> 0: it scrolls sideways)."""
    return browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


def check_screenshot(path: Path, min_size: tuple[int, int]) -> None:
    """A real picture: at least ``min_size``, many colours, not one flat tone."""
    with Image.open(path) as image:
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "almost one colour: blank"
        assert ImageStat.Stat(rgb.convert("L")).stddev[0] > 10, "no contrast: blank"


@pytest.fixture
async def live_collector(db, start_collector):
    # The page refreshes every second; its figures may be as old as FLEET_MAX_AGE_S.
    service = await start_collector(dashboard_refresh_s=1, fleet_max_age_s=1)
    await partitions_ready(db)
    return f"http://127.0.0.1:{service.http_port}"


async def test_operator_follows_the_fleet_to_a_vehicle(db, live_collector, browser, tmp_path):
    base = live_collector
    await load_known_fleet(db)
    loop = asyncio.get_running_loop()

    def add_vehicle_reading() -> None:
        now = datetime.now(UTC)
        coro = load(db, vehicles=[("VN", now - timedelta(seconds=5), 33.0, 0.4, 25.0)])
        asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    def steps() -> None:
        b = browser
        b.set_window_size(1280, 900)
        b.get(f"{base}/")  # the root leads to the dashboard
        wait(b, lambda b: b.current_url.endswith("/dashboard"), "redirect to /dashboard")
        assert text(b, "#total-ac") == EXPECTED["ac"]
        assert text(b, "#total-dc") == EXPECTED["dc"]
        assert text(b, "#total-efficiency") == EXPECTED["efficiency"]
        assert table_rows(b) == ["VX", "VL", "VU", "VG", "VS"]
        for vehicle, status in EXPECTED["status"].items():
            badges = text(b, f'tr[data-vehicle="{vehicle}"] td[data-col="status"]')
            assert badges.startswith(status), (vehicle, badges)
            assert ("silent" in badges) == (vehicle in EXPECTED["silent"]), vehicle
        # Failing chargers stand out: coloured rows and badges.
        assert background(b, 'tr[data-vehicle="VL"]') == "rgb(253, 236, 234)"
        assert background(b, 'tr[data-vehicle="VX"]') == "rgb(243, 229, 245)"
        assert background(b, 'tr[data-vehicle="VG"]') == "rgba(0, 0, 0, 0)"
        b.save_screenshot(str(tmp_path / "fleet.png"))
        check_screenshot(tmp_path / "fleet.png", (1200, 700))

        # It refreshes itself: a new vehicle appears without the page being reloaded.
        b.execute_script("window.__samePage = true;")
        add_vehicle_reading()
        wait(b, lambda b: "VN" in table_rows(b), "the new vehicle showing up")
        assert b.execute_script("return window.__samePage === true;"), "the page was reloaded"
        assert text(b, "#vehicles-reporting") == "6 / 6"

        # Filter by status, then follow the vehicle to its page.
        click(b, 'a[data-filter="low_efficiency"]')
        wait(b, lambda b: "show=low_efficiency" in b.current_url, "the filter")
        assert table_rows(b) == ["VL"]
        click(b, 'a[href="/dashboard/vehicles/VL"]')
        wait(b, lambda b: b.current_url.endswith("/dashboard/vehicles/VL"), "the vehicle page")
        assert text(b, "#perf-efficiency") == "0.700"
        assert text(b, "#status") == "low efficiency"
        assert text(b, "#perf-ac") == "18.00"
        charts = wait(
            b,
            lambda b: (
                (c := b.find_elements(By.CSS_SELECTOR, ".chart[data-drawn] canvas"))
                and (len(c) == 4 and c)
            ),
            "four charts drawn",
        )
        assert all(c.size["width"] > 200 and c.size["height"] > 100 for c in charts)
        b.save_screenshot(str(tmp_path / "vehicle.png"))
        check_screenshot(tmp_path / "vehicle.png", (1200, 700))

        # ...and on to the meter it charges from.
        click(b, "#linked-meter")
        wait(b, lambda b: b.current_url.endswith("/dashboard/meters/mB"), "the meter page")
        assert text(b, "#window-kwh") == "18.00"
        assert text(b, "#linked-vehicle") == "VL"

        # A phone: the pages fit the screen; the wide table scrolls inside its box, the
        # charts are drawn to the width there is.
        b.set_window_size(390, 844)
        b.get(f"{base}/dashboard")
        assert page_overflow(b) <= 0, f"the fleet page is {page_overflow(b)}px wider than a phone"
        assert text(b, "#total-ac") == EXPECTED["ac"]
        # The fleet table shows each vehicle's efficiency and status without scrolling
        # sideways: the box does not scroll, and both cells lie inside the screen.
        box = b.execute_script(
            "const s = document.querySelector('#vehicles').closest('.scroll');"
            "return [s.scrollWidth, s.clientWidth, window.innerWidth];"
        )
        assert box[0] <= box[1], f"the fleet table scrolls sideways on a phone: {box}"
        for col in ("efficiency", "status"):
            cells = b.find_elements(By.CSS_SELECTOR, f'#vehicles td[data-col="{col}"]')
            assert cells and all(c.is_displayed() for c in cells), col
            right = b.execute_script("return arguments[0].getBoundingClientRect().right;", cells[0])
            assert right <= box[2], f"{col} is off the screen ({right} > {box[2]})"
        b.save_screenshot(str(tmp_path / "phone.png"))
        check_screenshot(tmp_path / "phone.png", (360, 600))
        b.get(f"{base}/dashboard/vehicles/VL")
        wait(
            b, lambda b: len(b.find_elements(By.CSS_SELECTOR, ".chart[data-drawn]")) == 4, "charts"
        )
        assert page_overflow(b) <= 0, f"the vehicle page is {page_overflow(b)}px too wide"
        widths = b.execute_script(
            "return [...document.querySelectorAll('.chart canvas')].map(c => c.clientWidth);"
        )
        assert all(200 < w <= 390 for w in widths), widths

    await asyncio.to_thread(steps)


async def test_a_simulated_fleet_renders(db, live_collector, browser, tmp_path):
    """24 h of a simulated fleet (the README's screenshot): every vehicle has a row, the
    faulty chargers' vehicles are the low-efficiency ones, shown first."""
    fleet = Fleet(24, 24, faulty_share=0.15, seed=11)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(hours=24)
    quiet = {"vehicle-023", "vehicle-024"}  # stopped reporting 40 minutes ago
    meters, vehicles = [], []
    for step in range(1, 24 * 12 + 1):
        ts = start + timedelta(minutes=5 * step)
        for message in fleet.step(ts, 300):
            body = json.loads(message.payload)
            if message.kind == "meter":
                meters.append((body["meterId"], ts, body["kwhConsumedAc"], body["voltage"]))
            elif message.device_id not in quiet or ts < now - timedelta(minutes=40):
                vehicles.append(
                    (
                        body["vehicleId"],
                        ts,
                        body["soc"],
                        body["kwhDeliveredDc"],
                        body["batteryTemp"],
                    )
                )
    await load(db, meters=meters, vehicles=vehicles)
    for vehicle, meter in fleet.links:
        await q.put_link(db, vehicle, meter, start - timedelta(hours=1))
    faulty_vehicles = {v for v, m in fleet.links if m in fleet.faulty_meters}

    def steps() -> Path:
        b = live_collector
        browser.set_window_size(1280, 1000)
        browser.get(f"{b}/dashboard")
        rows = table_rows(browser)
        assert sorted(rows) == sorted(v.vehicle_id for v in fleet.vehicles)
        low = [
            tr.get_attribute("data-vehicle")
            for tr in browser.find_elements(By.CSS_SELECTOR, "tr.status-low_efficiency")
        ]
        assert set(low) == faulty_vehicles
        assert rows[: len(low)] == low  # worst first
        silent = browser.find_elements(By.CSS_SELECTOR, "tr.silent")
        assert {tr.get_attribute("data-vehicle") for tr in silent} == quiet
        path = tmp_path / "dashboard-fleet.png"
        browser.save_screenshot(str(path))
        check_screenshot(path, (1200, 800))
        return path

    path = await asyncio.to_thread(steps)
    if target := os.environ.get("SCREENSHOT_DIR"):
        shutil.copy(path, Path(target) / path.name)


ATTACK_PAGE = """<!doctype html><html><body><form id="f" method="post" enctype="text/plain"
action="TARGET"><input name='{"meterId":"m-evil-form","kwhConsumedAc":1,"voltage":230,
"timestamp":"STAMP","x":"' value='"}'></form><script>
const target = "TARGET";
const body = JSON.stringify({meterId: "m-evil", kwhConsumedAc: 1, voltage: 230,
                             timestamp: "STAMP"});
Promise.allSettled([
  fetch(target, {method: "POST", mode: "no-cors", body: new Blob([body])}),
  fetch(target, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                 body: body}),
]).then(() => {
  navigator.sendBeacon(target, new Blob([body]));
  navigator.sendBeacon(target, body);
  document.title = "sent";
  setTimeout(() => document.getElementById("f").submit(), 100);
});
</script></body></html>"""


async def test_a_page_on_another_site_cannot_write_through_the_browser(
    db, start_collector, browser
):
    """What worked against the default configuration before (issue 18): a page on another
    origin stored readings with a no-cors fetch, navigator.sendBeacon or a text/plain form.
    Now nothing it sends is stored (and the browser cannot read the refusals)."""
    service = await start_collector()
    stamp = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    target = f"http://127.0.0.1:{service.http_port}/v1/ingest"
    page = ATTACK_PAGE.replace("TARGET", target).replace("STAMP", stamp).encode()

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    site = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        # another origin: "localhost" and another port, as any site on the internet would be
        url = f"http://localhost:{site.server_address[1]}/"

        def steps() -> None:
            browser.get(url)
            wait(browser, lambda b: b.title == "sent" or "energy" in b.page_source, "the attack")

        await asyncio.to_thread(steps)
        await asyncio.sleep(2)  # the beacons and the form are sent in the background
    finally:
        site.shutdown()
        site.server_close()
    stored = await db.fetchval("SELECT count(*) FROM meter_readings WHERE meter_id LIKE 'm-evil%'")
    assert stored == 0
    assert await db.fetchval("SELECT count(*) FROM rejected_messages") == 0


async def test_an_operator_acknowledges_and_silences_from_the_alerts_page(
    db, start_collector, browser
):
    """Issue 26: acknowledging and silencing were curl only. With the write token the page
    does both; without it the page says why it was refused. Chart axes use the page's
    zone in 24-hour time."""
    service = await start_collector(
        alert_interval_s=1, alert_efficiency_interval_s=1, ingest_tokens="write-token-0123456789"
    )
    await partitions_ready(db)
    await load_known_fleet(db)
    base = f"http://127.0.0.1:{service.http_port}"

    def steps() -> None:
        b = browser
        b.set_window_size(1280, 900)

        def alert_rows(b: WebDriver) -> list[str]:
            b.get(f"{base}/dashboard/alerts?state=firing")
            return [
                r.get_attribute("data-alert")
                for r in b.find_elements(By.CSS_SELECTOR, "#alerts-list tr[data-alert]")
            ]

        rows = wait(b, lambda b: len(alert_rows(b)) >= 2 and alert_rows(b), "two alerts firing")
        first, second = rows[0], rows[1]
        b.find_element(By.ID, "alert-by").send_keys("tester")
        click(b, f'tr[data-alert="{first}"] button[data-ack]')  # no token: refused
        wait(b, lambda b: "write token" in text(b, "#alert-action-state"), "a refusal")
        b.find_element(By.ID, "alert-token").send_keys("write-token-0123456789")
        click(b, f'tr[data-alert="{first}"] button[data-ack]')
        wait(b, lambda b: "acknowledged by tester" in text(b, f'tr[data-alert="{first}"]'), "ack")
        click(b, f'tr[data-alert="{second}"] button[data-silence-device]')
        wait(b, lambda b: "silenced" in text(b, f'tr[data-alert="{second}"]'), "silenced")
        # both handled: they go after any alert still to act on
        order = [
            r.get_attribute("data-alert")
            for r in b.find_elements(By.CSS_SELECTOR, "#alerts-list tr[data-alert]")
        ]
        assert order.index(first) >= len(order) - 2 and order.index(second) >= len(order) - 2
        # the vehicle page's chart axis: 24-hour times, no am/pm
        b.get(f"{base}/dashboard/vehicles/VL")
        wait(b, lambda b: b.find_elements(By.CSS_SELECTOR, ".chart[data-drawn]"), "charts")
        axis = b.execute_script(
            "return [...document.querySelectorAll('.u-axis')].map(a => a.textContent).join(' ');"
        )
        assert "am" not in axis.lower() and "pm" not in axis.lower(), axis

    await asyncio.to_thread(steps)
