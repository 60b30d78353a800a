// The dashboard's only script: refresh the fleet without reloading the page, draw the charts
// (uPlot, vendored in /static/uplot). The pages are complete without it.
"use strict";

(function () {
  const FRAGMENT_HEADER = "X-Dashboard-Fragment";

  // --- refresh: fetch this same URL as a fragment and swap #live --------------------------
  function startRefresh(live) {
    const seconds = Number(live.dataset.refresh);
    if (!seconds) return;
    const state = document.getElementById("refresh-state");
    let timer = null;
    async function refresh() {
      try {
        const response = await fetch(location.href, {
          headers: { [FRAGMENT_HEADER]: "1" },
          credentials: "same-origin",
          cache: "no-store",
        });
        const html = await response.text();
        if (response.status === 401) {
          location.reload();  // signed out: the full page goes to the login form
          return;
        }
        if (!response.ok) {
          const doc = new DOMParser().parseFromString(html, "text/html");
          const detail = doc.querySelector("#message p");
          state.textContent = "Refresh failed (" + response.status + "): " +
            (detail ? detail.textContent : response.statusText) +
            ". Showing the last figures; retrying.";
          state.classList.add("error");
        } else {
          live.innerHTML = html;
          state.textContent = "";
          state.classList.remove("error");
          document.dispatchEvent(new CustomEvent("dashboard:refreshed"));
        }
      } catch (err) {
        state.textContent = "Refresh failed: the collector does not answer (" + err.message +
          "). Showing the last figures; retrying.";
        state.classList.add("error");
      }
      schedule();
    }
    function schedule() {
      clearTimeout(timer);
      if (!document.hidden) timer = setTimeout(refresh, seconds * 1000);
    }
    document.addEventListener("visibilitychange", () => (document.hidden ? clearTimeout(timer) : refresh()));
    schedule();
  }

  // --- charts -------------------------------------------------------------------------------
  const COLORS = { ac: "#1f6feb", dc: "#1b7f3b", low: "#c62828", avg: "#6a1b9a", band: "#b39ddb" };

  function chartSpecs(d) {
    const bars = uPlot.paths.bars({ size: [0.6, 40], align: 0 });
    const threshold = d.t.map(() => d.efficiencyLow);
    if (d.kind === "vehicle") {
      return {
        energy: [[d.ac, d.dc], [
          { label: "AC kWh", stroke: COLORS.ac, fill: COLORS.ac + "55", paths: bars },
          { label: "DC kWh", stroke: COLORS.dc, fill: COLORS.dc + "55", paths: bars },
        ]],
        efficiency: [[d.efficiency, threshold], [
          { label: "DC/AC", stroke: COLORS.ac, width: 2, points: { show: true, size: 4 } },
          { label: "threshold", stroke: COLORS.low, dash: [6, 4], points: { show: false } },
        ]],
        soc: [[d.socAvg, d.socMin, d.socMax], [
          { label: "avg %", stroke: COLORS.dc, width: 2 },
          { label: "min %", stroke: COLORS.band, dash: [3, 3] },
          { label: "max %", stroke: COLORS.band, dash: [3, 3] },
        ]],
        temp: [[d.tempAvg, d.tempMax], [
          { label: "avg °C", stroke: COLORS.avg, width: 2 },
          { label: "max °C", stroke: COLORS.low, dash: [3, 3] },
        ]],
      };
    }
    return {
      energy: [[d.ac], [{ label: "AC kWh", stroke: COLORS.ac, fill: COLORS.ac + "55", paths: bars }]],
      voltage: [[d.voltageAvg, d.voltageMin, d.voltageMax], [
        { label: "avg V", stroke: COLORS.avg, width: 2 },
        { label: "min V", stroke: COLORS.band, dash: [3, 3] },
        { label: "max V", stroke: COLORS.band, dash: [3, 3] },
      ]],
    };
  }

  // Times in the page's one zone (DISPLAY_TIME_ZONE), 24-hour, as the cards and tables:
  // not the browser's zone and format. sv-SE formats as ISO does ("2026-12-07 14:05").
  function timeFormats(zone) {
    const part = { timeZone: zone, hourCycle: "h23" };
    const hm = new Intl.DateTimeFormat("sv-SE", { ...part, hour: "2-digit", minute: "2-digit" });
    const day = new Intl.DateTimeFormat("sv-SE", { ...part, month: "2-digit", day: "2-digit" });
    const full = new Intl.DateTimeFormat("sv-SE", {
      ...part, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    });
    const at = (s) => new Date(s * 1000);
    return {
      tick: (s, span) => (span > 2 * 86400 ? day.format(at(s)) : hm.format(at(s))),
      full: (s) => full.format(at(s)),
    };
  }

  function drawCharts() {
    const source = document.getElementById("chart-data");
    if (!source || typeof uPlot === "undefined") return;
    const d = JSON.parse(source.textContent);
    const specs = chartSpecs(d);
    const zone = d.zone || "UTC";
    const fmt = timeFormats(zone);
    const plots = [];
    for (const el of document.querySelectorAll("[data-chart]")) {
      const spec = specs[el.dataset.chart];
      if (!spec) continue;
      const [columns, series] = spec;
      const opts = {
        width: Math.max(240, el.clientWidth),
        height: 220,
        // ticks at whole hours of the zone, labelled in it
        tzDate: (s) => uPlot.tzDate(new Date(s * 1000), zone),
        series: [
          { label: zone, value: (u, s) => (s == null ? "–" : fmt.full(s)) },
          ...series.map((s) => ({ spanGaps: false, ...s })),
        ],
        axes: [
          { values: (u, splits) => {
            const span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
            return splits.map((s) => (s == null ? "" : fmt.tick(s, span)));
          } },
          { size: 50 },
        ],
        legend: { live: true },
        cursor: { drag: { x: false, y: false } },
      };
      const plot = new uPlot(opts, [d.t, ...columns], el);
      el.dataset.drawn = String(d.t.length);
      plots.push([plot, el]);
    }
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => {
        for (const [plot, el] of plots) plot.setSize({ width: Math.max(240, el.clientWidth), height: 220 });
      }, 150);
    });
  }

  // --- alerts page: acknowledge and silence through the API, with the write token --------
  function alertActions() {
    const list = document.getElementById("alerts-list");
    const by = document.getElementById("alert-by");
    if (!list || !by) return;
    const token = document.getElementById("alert-token");
    const hours = document.getElementById("alert-silence-hours");
    const state = document.getElementById("alert-action-state");
    by.value = sessionStorage.getItem("alert-by") || "";
    if (token) token.value = sessionStorage.getItem("alert-token") || "";
    function fail(text) {
      state.textContent = text;
      state.classList.add("error");
    }
    async function send(path, body) {
      const who = by.value.trim();
      if (!who) {
        fail("Say who acts (Your name) first.");
        by.focus();
        return;
      }
      sessionStorage.setItem("alert-by", who);  // this tab only
      if (token) sessionStorage.setItem("alert-token", token.value);
      const headers = { "content-type": "application/json" };
      if (token && token.value) headers.authorization = "Bearer " + token.value;
      try {
        const response = await fetch(path, {
          method: "POST", headers, credentials: "same-origin",
          body: JSON.stringify({ ...body, by: who }),
        });
        if (response.ok) {
          location.reload();
          return;
        }
        let detail = response.statusText;
        try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
        fail((response.status === 401 || response.status === 403
          ? "Refused: the write token is missing or wrong" : "Refused (" + response.status + ")") +
          ": " + detail);
      } catch (err) {
        fail("The collector does not answer: " + err.message);
      }
    }
    list.addEventListener("click", (event) => {
      const button = event.target.closest("button");
      if (!button) return;
      if (button.dataset.ack) {
        send("/v1/alerts/" + button.dataset.ack + "/acknowledge", {});
      } else if (button.dataset.silenceDevice) {
        const until = new Date(Date.now() + Number(hours.value) * 3600e3).toISOString();
        send("/v1/silences", {
          kind: button.dataset.silenceKind, deviceId: button.dataset.silenceDevice,
          rule: button.dataset.silenceRule, until, comment: "from the dashboard",
        });
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const live = document.getElementById("live");
    if (live) startRefresh(live);
    drawCharts();
    alertActions();
  });
})();
