// chatops dashboard: refresh <main> every scrape interval without reloading, keep the
// "last scrape N s ago" clock ticking, and say plainly when the control plane is unreachable.
// No framework, nothing fetched from elsewhere.
(function () {
  "use strict";
  window.__loaded_at = Date.now();
  var body = document.body;
  var period = Math.max(1, parseFloat(body.dataset.refreshS || "5")) * 1000;
  var scrape = document.getElementById("last-scrape");
  var ageEl = document.getElementById("last-scrape-age");
  var banner = document.getElementById("unreachable");
  var bannerSince = document.getElementById("unreachable-since");
  var main = document.getElementById("main");
  var interval = parseFloat(scrape && scrape.dataset.interval || "5");
  // server clock minus browser clock, so ages are right even if the two disagree
  var skew = scrape && scrape.dataset.now ? parseFloat(scrape.dataset.now) - Date.now() / 1000 : 0;
  var lastScrape = scrape && scrape.dataset.at ? parseFloat(scrape.dataset.at) : null;
  var busy = false, failedSince = null, timer = null;
  window.__refreshes = 0;

  function human(s) {
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function tick() {
    if (!ageEl) return;
    if (!lastScrape) { ageEl.textContent = "never"; return; }
    var age = Math.max(0, Date.now() / 1000 + skew - lastScrape);
    ageEl.textContent = human(age) + " ago";
    scrape.classList.toggle("stale", age > 3 * interval);
  }

  function showUnreachable(why) {
    if (failedSince === null) {
      failedSince = new Date();
      bannerSince.textContent = failedSince.toLocaleTimeString() + " (" + why + ")";
    }
    banner.hidden = false;
  }

  function openDetails() {
    var keys = {};
    main.querySelectorAll("details[open][data-key]").forEach(function (d) { keys[d.dataset.key] = true; });
    return keys;
  }

  function editing() {
    // A form being filled in (the Slots page's "Plan a change") must not be replaced under the user.
    var a = document.activeElement;
    if (a && main.contains(a) && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName) && a.type !== "hidden") return true;
    var changed = false;
    main.querySelectorAll("textarea, input:not([type=hidden])").forEach(function (f) {
      if (f.value !== f.defaultValue) changed = true;
    });
    main.querySelectorAll("select").forEach(function (f) {
      // (the page marks one option selected, so its default is known)
      f.querySelectorAll("option").forEach(function (o) { if (o.selected !== o.defaultSelected) changed = true; });
    });
    return changed;
  }

  function refresh() {
    if (busy || document.hidden || editing()) return;
    var sel = window.getSelection && window.getSelection();
    if (sel && !sel.isCollapsed && main.contains(sel.anchorNode)) return;  // do not pull text from under a selection
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    var ctrl = new AbortController();
    var guard = setTimeout(function () { ctrl.abort(); }, Math.max(period, 3000));
    fetch(url.toString(), {headers: {"X-Requested-With": "chatops-dashboard"}, cache: "no-store",
                           signal: ctrl.signal})
      .then(function (resp) {
        return resp.text().then(function (text) { return {resp: resp, text: text}; });
      })
      .then(function (r) {
        // a 404 is still a page (an unknown name); anything 5xx is a broken control plane
        if (r.resp.status >= 500) { showUnreachable("HTTP " + r.resp.status); return; }
        var open = openDetails();
        var x = window.scrollX, y = window.scrollY;
        main.innerHTML = r.text;
        main.querySelectorAll("details[data-key]").forEach(function (d) { if (open[d.dataset.key]) d.open = true; });
        window.scrollTo(x, y);
        main.dataset.renderedAt = r.resp.headers.get("X-Rendered-At") || "";
        var ls = r.resp.headers.get("X-Last-Scrape");
        lastScrape = ls ? parseFloat(ls) : null;
        var rendered = parseFloat(main.dataset.renderedAt);
        if (rendered) skew = rendered - Date.now() / 1000;
        updateFailing(parseInt(r.resp.headers.get("X-Failing-Jobs") || "0", 10));
        failedSince = null;
        banner.hidden = true;
        window.__refreshes += 1;
        tick();
      })
      .catch(function (err) {
        showUnreachable(err && err.name === "AbortError" ? "no answer" : "connection failed");
      })
      .then(function () { clearTimeout(guard); busy = false; });
  }

  function updateFailing(n) {
    var el = document.getElementById("failing-jobs");
    var jobsLink = document.querySelector('header.top nav a[href$="/jobs"]');
    if (!jobsLink) return;
    if (n > 0) {
      if (!el) {
        el = document.createElement("span");
        el.id = "failing-jobs";
        el.className = "badge bad";
        jobsLink.appendChild(document.createTextNode(" "));
        jobsLink.appendChild(el);
      }
      el.textContent = n + " failing";
    } else if (el) {
      el.remove();
    }
  }

  document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  setInterval(tick, 1000);
  timer = setInterval(refresh, period);
  tick();
})();
