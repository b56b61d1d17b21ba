// cnp dashboard: the statistics charts, drawn with uPlot from one request per page.
"use strict";
(() => {
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  function chart(el, series, data, opts = {}) {
    const width = Math.max(280, el.clientWidth || 600);
    return new uPlot({
      width, height: 220,
      series: [{}, ...series],
      axes: [{ stroke: css("--muted"), grid: { stroke: css("--line") } },
             { stroke: css("--muted"), grid: { stroke: css("--line") }, values: opts.values }],
      scales: { x: { time: true } },
      legend: { live: true },
    }, data, el);
  }
  // Stacked bars: each series is drawn as the running sum of those before it.
  function stack(rows, keys) {
    const out = [];
    let acc = rows.map(() => 0);
    for (const k of keys) { acc = acc.map((a, i) => a + rows[i][k]); out.push(acc.slice()); }
    return out;
  }
  document.addEventListener("DOMContentLoaded", async () => {
    const box = document.getElementById("charts");
    if (!box || typeof uPlot === "undefined") return;
    let doc;
    try {
      const r = await fetch(box.dataset.source, { credentials: "same-origin" });
      doc = await r.json();
    } catch (_) { return; }
    const rows = doc.daily.map((d) => ({ ...d, bad: d.failed + d.timed_out + d.interrupted, other: d.cancelled + d.skipped }));
    const xs = rows.map((d) => d.start);
    const bars = uPlot.paths.bars({ size: [0.7, 40] });
    const [ok, bad, other] = stack(rows, ["completed", "bad", "other"]);
    chart(document.getElementById("chart-runs"), [
      { label: "other", stroke: css("--muted"), fill: css("--muted"), paths: bars },
      { label: "failed", stroke: css("--bad"), fill: css("--bad"), paths: bars },
      { label: "completed", stroke: css("--ok"), fill: css("--ok"), paths: bars },
    ], [xs, other, bad, ok]);
    const secs = (v) => (v == null ? null : v / 1000);
    chart(document.getElementById("chart-durations"), [
      { label: "p50 (s)", stroke: css("--run"), width: 2 },
      { label: "p95 (s)", stroke: css("--wait"), width: 2 },
    ], [xs, rows.map((d) => secs(d.p50_ms)), rows.map((d) => secs(d.p95_ms))]);
    chart(document.getElementById("chart-cost"), [
      { label: "cost ($)", stroke: css("--accent"), fill: css("--accent"), paths: bars },
    ], [xs, rows.map((d) => d.cost_usd)], { values: (u, v) => v.map((x) => "$" + x.toFixed(2)) });
  });
})();
