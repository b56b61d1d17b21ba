// cnp dashboard: the live parts. Every page works without this file; it adds local times,
// countdowns, the schedule preview and live logs (over the API's WebSocket, same session).
"use strict";
(() => {
  const $ = (s, el = document) => el.querySelector(s);
  const $$ = (s, el = document) => Array.from(el.querySelectorAll(s));
  const csrf = document.body.dataset.csrf || "";
  const localZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  // The service's clock, not the viewer's: countdowns stay right on a machine whose clock is off.
  const served = Date.parse(document.body.dataset.now || "");
  const skew = isNaN(served) ? 0 : served - Date.now();
  const now = () => Date.now() + skew;

  function span(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m ${String(r).padStart(2, "0")}s`;
    return `${r}s`;
  }
  // To the second, for countdowns: `1h 59m 58s`.
  function countdown(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const pad = (n) => String(n).padStart(2, "0");
    if (d) return `${d}d ${h}h ${pad(m)}m`;
    if (h) return `${h}h ${pad(m)}m ${pad(r)}s`;
    return m ? `${m}m ${pad(r)}s` : `${r}s`;
  }
  function relative(t) {
    const diff = t - now();
    return diff >= 0 ? `in ${span(diff)}` : `${span(-diff)} ago`;
  }

  // Times: the job's zone is in the text; add the viewer's own zone when it differs.
  function localize(root = document) {
    for (const el of $$("time[data-local]", root)) {
      const t = new Date(el.dateTime);
      if (isNaN(t)) continue;
      const mine = `${fmt.format(t)} (${localZone})`;
      el.title = `${mine} · ${relative(t)}`;
      if (!el.dataset.done && !el.textContent.includes(localZone)) {
        const s = document.createElement("span");
        s.className = "muted small yours";
        s.textContent = ` · ${fmt.format(t)} yours`;
        el.after(s);
      }
      el.dataset.done = "1";
    }
    for (const el of $$("time[data-relative]", root)) {
      const t = new Date(el.dateTime);
      if (!isNaN(t)) { el.title = el.textContent; el.textContent = relative(t); }
    }
  }

  // Countdowns (the cooldown banner): tick every second; reload once it is over.
  function tick() {
    for (const el of $$("time.countdown")) {
      const t = new Date(el.dateTime);
      if (isNaN(t)) continue;
      const left = t - now();
      el.textContent = left > 0 ? `${fmt.format(t)} (in ${countdown(left)})` : "now";
      el.title = `${fmt.format(t)} (${localZone})`;
    }
  }

  // The cooldown banner follows the service: poll its state, reload the page when it changes
  // (not while a form is being filled in).
  let cooldownActive = !!$("#cooldown-banner .banner");
  async function pollCooldown() {
    try {
      const r = await fetch("/api/cooldown", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!r.ok) return;
      const body = await r.json();
      const d = $("[data-deferred]");
      if (d && body.cooldown) d.textContent = body.cooldown.deferred;
      if (body.active !== cooldownActive && !$("form.job-form")) location.reload();
    } catch (_) { /* the service may be restarting */ }
  }

  // Forms: select-all, sections shown by a choice, confirmations.
  function forms() {
    const all = $("#select-all");
    if (all) all.addEventListener("change", () => $$("input[name=job]").forEach((c) => (c.checked = all.checked)));
    const shows = $$("[data-show-when]");
    const update = () => {
      for (const el of shows) {
        const [name, vals] = el.dataset.showWhen.split("=");
        const field = $$(`[name="${name}"]`).find((f) => f.type !== "radio" || f.checked);
        el.hidden = !(field && vals.split(",").includes(field.value));
      }
    };
    if (shows.length) { document.addEventListener("change", update); update(); }
    for (const b of $$("[data-confirm]")) {
      b.addEventListener("click", (e) => { if (!confirm(b.dataset.confirm)) e.preventDefault(); });
    }
  }

  // The job form's "next 5 runs", from the service (the engine's own schedule code).
  function preview() {
    const box = $("#schedule-preview"), set = $("#schedule-fields");
    if (!box || !set) return;
    let timer;
    const run = async () => {
      const body = new URLSearchParams();
      body.set("csrf", csrf);
      for (const f of $$("input, select", set)) if (f.name) body.set(f.name, f.value);
      try {
        const r = await fetch("/ui/preview", { method: "POST", body, credentials: "same-origin" });
        const p = await r.json();
        box.replaceChildren();
        if (p.error) {
          const e = document.createElement("p");
          e.className = "field-error";
          e.textContent = p.error;
          box.append(e);
          return;
        }
        const d = document.createElement("p");
        d.textContent = p.description;
        box.append(d);
        if (p.next.length) {
          const ol = document.createElement("ol");
          for (const n of p.next) {
            const li = document.createElement("li");
            const t = document.createElement("time");
            t.dateTime = n.iso; t.dataset.local = ""; t.textContent = n.text;
            li.append(t); ol.append(li);
          }
          box.append(ol);
          localize(box);
        }
      } catch (_) { /* keep the last preview */ }
    };
    set.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(run, 250); });
    set.addEventListener("change", () => { clearTimeout(timer); timer = setTimeout(run, 50); });
    run();
  }

  // A stream-json line as short text (the same rules as `cnp job logs`); null: not shown.
  function pretty(stream, line) {
    const t = line.trim();
    if (stream !== "stdout" || !t.startsWith("{")) {
      return stream === "stderr" ? `[stderr] ${line}` : stream === "system" ? `[cnp] ${line}` : line;
    }
    let v;
    try { v = JSON.parse(t); } catch (_) { return line; }
    switch (v.type) {
      case "system": return v.subtype === "init" ? `[claude] session started (model ${v.model || "?"})` : null;
      case "assistant": {
        const parts = ((v.message && v.message.content) || []).map((c) =>
          c.type === "text" ? (c.text || "").trim() : c.type === "tool_use" ? `[tool] ${c.name || "?"}` : "").filter(Boolean);
        return parts.length ? parts.join("\n") : null;
      }
      case "result": case "user": case "rate_limit_event": return null;
      default: return line;
    }
  }

  // The live log: the stored lines are on the page; the socket sends the backlog again and
  // then new lines, so lines up to the last one shown are skipped.
  function liveLog() {
    const log = $("#log");
    if (!log || log.dataset.live !== "yes") return;
    const id = log.dataset.execution;
    let last = Number(log.dataset.lastSeq);
    const follow = $("#log-follow"), state = $("#log-state"), status = $("#run-status");
    let auto = true;
    log.addEventListener("scroll", () => {
      const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 8;
      if (!atEnd && auto) { auto = false; if (follow) follow.checked = false; }
      if (atEnd && !auto) { auto = true; if (follow) follow.checked = true; }
    });
    if (follow) follow.addEventListener("change", () => { auto = follow.checked; if (auto) log.scrollTop = log.scrollHeight; });
    log.scrollTop = log.scrollHeight;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/ws?execution_id=${encodeURIComponent(id)}`);
    ws.onopen = () => { if (state) state.textContent = "live"; };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      if (m.type === "log" && m.seq > last) {
        last = m.seq;
        const text = pretty(m.stream, m.message);
        if (text === null) return;
        const s = document.createElement("span");
        s.className = `line ${m.stream}`;
        s.dataset.seq = m.seq;
        s.textContent = text + "\n";
        log.append(s);
        if (auto) log.scrollTop = log.scrollHeight;
      } else if (m.type === "jobStatus" && m.executionId === id) {
        if (status) { status.textContent = m.status.replace("_", " "); status.dataset.status = m.status; }
        if (["completed", "failed", "timed_out", "cancelled", "interrupted", "skipped"].includes(m.status)) {
          if (state) state.textContent = "finished";
          setTimeout(() => location.reload(), 800);
        }
      }
    };
    ws.onclose = () => { if (state && state.textContent === "live") state.textContent = "disconnected — reload to resume"; };
  }

  // A workflow pass while it runs: reload the page (it is drawn on the service) when one of
  // its jobs' runs moves, at most once a second; every 15 s as well, in case the socket is gone.
  function livePass() {
    const el = $("#pass-live");
    if (!el || el.dataset.passLive !== "yes") return;
    const jobs = new Set((el.dataset.passJobs || "").split(" ").filter(Boolean));
    let pending = false;
    const reload = () => {
      if (pending) return;
      pending = true;
      setTimeout(() => location.reload(), 1000);
    };
    try {
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(`${proto}//${location.host}/api/ws`);
      ws.onmessage = (ev) => {
        let m;
        try { m = JSON.parse(ev.data); } catch (_) { return; }
        if (m.type === "jobStatus" && m.executionId && jobs.has(m.jobId)) reload();
      };
    } catch (_) { /* the periodic reload below still runs */ }
    setInterval(reload, 15000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    localize();
    tick();
    setInterval(tick, 1000);
    setInterval(pollCooldown, 15000);
    forms();
    preview();
    liveLog();
    livePass();
  });
})();
