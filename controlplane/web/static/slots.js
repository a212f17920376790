// chatops dashboard: the migration panel (#migration, templates/_slots.html) on /slots and on the
// page of a plan that moves slots. Every second, while the panel says data-poll="1", fetch
// GET /api/v1/slots/progress and redraw the panel's figures in place. dashboard.js swaps <main>
// every scrape interval, so the panel is looked up afresh on each tick. No framework, nothing
// fetched from elsewhere.
(function () {
  "use strict";
  var PERIOD_MS = 1000;
  var RUNNING = {starting: true, scanning: true, moving: true, publishing: true};
  var busy = false;
  window.__migration_polls = 0;

  function num(n) {
    return typeof n === "number" && isFinite(n) ? Math.round(n).toLocaleString("en-US") : "—";
  }

  // the dashboard's duration format (dashboard.py `duration`), for ETA and ages
  function human(s) {
    if (typeof s !== "number" || !isFinite(s)) return "—";
    if (s <= 0) return "0 s";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function set(id, text) {
    var el = document.getElementById(id);
    if (el && el.textContent !== text) el.textContent = text;
    return el;
  }

  function fraction(p) {
    if (p.phase === "done") return 1;
    if (p.keys_total) return Math.min(1, (p.keys_moved || 0) / p.keys_total);
    if (p.slots_total) return Math.min(1, (p.slots_done || 0) / p.slots_total);
    return 0;
  }

  function what(p) {
    var el = document.getElementById("migration-what");
    if (!el) return;
    el.textContent = "";
    if (p.phase === "idle") {
      el.appendChild(document.createTextNode("No slot has been moved on this cluster yet: a "));
      var c = document.createElement("code");
      c.textContent = "reshard";
      el.appendChild(c);
      el.appendChild(document.createTextNode(" plan's apply shows its progress here."));
      return;
    }
    if (p.phase === "waiting") {
      el.textContent = "Waiting for the apply to report its first progress.";
      return;
    }
    function add(tag, text) {
      var e = document.createElement(tag);
      e.textContent = text;
      el.appendChild(e);
    }
    add("code", p.action || "move");
    if (p.from) { el.appendChild(document.createTextNode(" from ")); add("b", p.from); }
    if (p.to) { el.appendChild(document.createTextNode(" to ")); add("b", p.to); }
    if (p.slots) { el.appendChild(document.createTextNode(", slots ")); add("code", String(p.slots)); }
  }

  function draw(panel, p, serverNow) {
    var phase = p.phase || "?";
    var badge = document.getElementById("migration-phase");
    if (badge && badge.dataset.phase !== phase) {
      badge.dataset.phase = phase;
      badge.textContent = phase;
      badge.className = "badge " + (phase === "done" ? "ok" : phase === "failed" ? "bad"
        : (phase === "idle" || phase === "waiting") ? "unknown" : "warn");
    }
    panel.dataset.phase = phase;
    if (panel.dataset.drawn !== String(p.written_at) + phase) {
      what(p);
      panel.dataset.drawn = String(p.written_at) + phase;
    }
    var f = fraction(p);
    var bar = document.getElementById("migration-bar");
    if (bar) bar.value = f;
    set("migration-pct", Math.round(f * 100) + " %");
    set("migration-keys", (p.keys_total || p.keys_moved) ? num(p.keys_moved || 0) + " / " + num(p.keys_total || 0) : "—");
    set("migration-slots", p.slots_total ? num(p.slots_done || 0) + " / " + num(p.slots_total) : "—");
    set("migration-rate", p.keys_per_s ? num(p.keys_per_s) + " keys/s" : "—");
    set("migration-eta", phase === "moving" && typeof p.eta_s === "number" ? human(p.eta_s) : "—");
    var detail = set("migration-detail", p.detail || "—");
    if (detail) detail.classList.toggle("bad", phase === "failed");
    var age = typeof p.written_at === "number" ? Math.max(0, serverNow - p.written_at) : null;
    set("migration-updated", age === null ? "—" : human(age) + " ago");
    var stalledAfter = parseFloat(panel.dataset.stalledS || "10");
    var stalled = document.getElementById("migration-stalled");
    if (stalled) {
      var isStalled = !!RUNNING[phase] && age !== null && age > stalledAfter;
      stalled.hidden = !isStalled;
      if (isStalled) set("migration-stalled-for", human(age));
    }
  }

  function poll() {
    var panel = document.getElementById("migration");
    if (!panel || panel.dataset.poll !== "1" || busy || document.hidden) return;
    busy = true;
    var ctrl = new AbortController();
    var guard = setTimeout(function () { ctrl.abort(); }, 3000);
    fetch(panel.dataset.url, {headers: {"Accept": "application/json"}, cache: "no-store", signal: ctrl.signal})
      .then(function (resp) {
        if (!resp.ok) return null;
        var date = Date.parse(resp.headers.get("Date") || "");
        return resp.json().then(function (p) { return {p: p, now: isNaN(date) ? Date.now() / 1000 : date / 1000}; });
      })
      .then(function (r) {
        // the panel may have been swapped by dashboard.js meanwhile: draw into the current one
        var current = document.getElementById("migration");
        if (!r || !current) return;
        var p = r.p, since = parseFloat(current.dataset.since || "");
        if (!isNaN(since) && (typeof p.written_at !== "number" || p.written_at < since)) p = {phase: "waiting"};
        // the Date header has whole seconds: never let it make an update look older than it is
        var now = Math.max(r.now, typeof p.written_at === "number" ? p.written_at : 0);
        draw(current, p, now);
        window.__migration_polls += 1;
      })
      .catch(function () { /* dashboard.js says when the control plane is unreachable */ })
      .then(function () { clearTimeout(guard); busy = false; });
  }

  setInterval(poll, PERIOD_MS);
  poll();
})();
