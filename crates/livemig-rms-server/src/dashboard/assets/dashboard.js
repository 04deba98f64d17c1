// The livemig RMS dashboard. No framework, no dependency: it polls the RMS's API about once a
// second (backing off on errors) and redraws the page. Text from the API is only ever set with
// textContent or as SVG text nodes, never parsed as HTML.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "livemig.token";
  const POLL_MS = 1000;
  const MAX_BACKOFF_MS = 30000;
  // How long the bandwidth chart looks back, and how often the budget is asked again.
  const HISTORY_MS = 5 * 60 * 1000;
  const BUDGET_EVERY_MS = 30000;
  const MIN_WINDOW_MS = 60 * 1000;
  // The migrations that are not over yet.
  const LIVE_STATES = ["queued", "placing", "running", "switching_over", "unknown"];
  // The ones whose source is copying at its latest round's cap.
  const COPYING_STATES = ["running", "switching_over"];

  const $ = (id) => document.getElementById(id);
  const state = {
    delay: POLL_MS,
    timer: null,
    bandwidth: [], // [{t: ms, v: bytes/s}]
    // The budget hook: `undefined` not asked yet, `null` none (404), else bytes/s.
    budget: undefined,
    budgetAsked: 0,
    polls: 0,
    busy: false,
  };

  // --- the token -------------------------------------------------------------------------

  function takeTokenFromFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(window.location.hash);
    if (m) {
      let t = m[1];
      try { t = decodeURIComponent(t); } catch (_) { /* kept as written */ }
      sessionStorage.setItem(TOKEN_KEY, t);
      // Out of the address bar and the history.
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  // --- the API ---------------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function get(path) {
    const r = await fetch(path, {
      headers: { Authorization: "Bearer " + token(), Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try {
        const body = await r.json();
        if (body && typeof body.error === "string") msg = r.status + ": " + body.error;
      } catch (_) { /* not JSON */ }
      throw new HttpError(r.status, msg);
    }
    return r.json();
  }

  // The budget: `GET /api/v1/budget` names the uplink's budget (`uplink_bytes_per_s`) when
  // the RMS has one; then the bandwidth chart draws its line. Without one (null), or from an
  // RMS without the route (404), no line.
  async function askBudget() {
    state.budgetAsked = Date.now();
    try {
      const b = await get("/api/v1/budget");
      const v = b && b.uplink_bytes_per_s;
      state.budget = typeof v === "number" && isFinite(v) && v > 0 ? v : null;
    } catch (e) {
      if (e instanceof HttpError && e.status === 404) state.budget = null;
      else throw e;
    }
  }

  async function poll() {
    if (!token()) {
      setStatus("no token: open this page as /#token=… or enter it above", true);
      return false;
    }
    const lists = await Promise.all(
      [get("/api/v1/hosts"), get("/api/v1/vms")].concat(
        LIVE_STATES.map((s) => get("/api/v1/migrations?state=" + s))
      )
    );
    if (state.budget === undefined || Date.now() - state.budgetAsked > BUDGET_EVERY_MS) {
      await askBudget();
    }
    const [hosts, vms] = lists;
    const migrations = [].concat(...lists.slice(2)).sort((a, b) => a.id - b.id);
    record(migrations);
    render(hosts, vms, migrations);
    state.polls += 1;
    setStatus("updated " + new Date().toLocaleTimeString(), false);
    return true;
  }

  async function loop() {
    clearTimeout(state.timer);
    if (state.busy) return; // the poll under way schedules the next
    state.busy = true;
    try {
      await poll();
      state.delay = POLL_MS;
    } catch (e) {
      state.delay = Math.min(MAX_BACKOFF_MS, state.delay * 2);
      const why = e instanceof HttpError && e.status === 401
        ? "the RMS refused the token (401)"
        : String(e.message || e);
      setStatus(why + "; retrying in " + Math.round(state.delay / 1000) + " s", true);
    }
    state.busy = false;
    state.timer = setTimeout(loop, state.delay);
  }

  function setStatus(text, bad) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", bad);
  }

  // --- numbers ---------------------------------------------------------------------------

  function bytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = Math.abs(n);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (n < 0 ? "-" : "") + (v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }

  function rate(n) {
    return bytes(n) + "/s";
  }

  function latestRound(m) {
    return m.rounds && m.rounds.length ? m.rounds[m.rounds.length - 1] : null;
  }

  // --- the bandwidth history ---------------------------------------------------------------

  function record(migrations) {
    let sum = 0;
    for (const m of migrations) {
      const r = latestRound(m);
      if (r && COPYING_STATES.includes(m.state)) sum += r.cap_bytes_per_s;
    }
    const now = Date.now();
    state.bandwidth.push({ t: now, v: sum });
    while (state.bandwidth.length && state.bandwidth[0].t < now - HISTORY_MS) state.bandwidth.shift();
  }

  // --- the DOM ---------------------------------------------------------------------------

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function render(hosts, vms, migrations) {
    renderHosts(hosts, vms);
    renderMigrations(migrations, vms);
    renderBandwidth();
  }

  function renderHosts(hosts, vms) {
    const memory = new Map(vms.map((v) => [v.name, v.memory_bytes]));
    const rows = hosts.map((h) => {
      const tr = el("tr");
      tr.dataset.host = h.name;
      tr.append(el("td", h.name), el("td", h.state, h.state === "alive" ? "alive" : "lost"),
        el("td", h.address));
      const free = el("td");
      const p = el("progress");
      p.max = h.memory_total_bytes || 1;
      p.value = h.memory_free_bytes;
      free.append(p, document.createTextNode(bytes(h.memory_free_bytes) + " of " + bytes(h.memory_total_bytes)));
      const list = el("td", null, "vms");
      for (const name of h.vms) {
        const s = el("span", name);
        s.dataset.vm = name;
        if (memory.has(name)) s.title = bytes(memory.get(name));
        list.append(s);
      }
      if (!h.vms.length) list.append(document.createTextNode("–"));
      tr.append(free, list);
      return tr;
    });
    if (!rows.length) {
      const td = el("td", "No host has registered.", "empty");
      td.colSpan = 5;
      rows.push(el("tr"));
      rows[0].append(td);
    }
    $("hosts").tBodies[0].replaceChildren(...rows);
    $("hosts-count").textContent = "(" + hosts.length + " hosts, " + vms.length + " VMs)";
  }

  function renderMigrations(migrations, vms) {
    const memory = new Map(vms.map((v) => [v.name, v.memory_bytes]));
    const cards = migrations.map((m) => {
      const card = el("article", null, "migration");
      card.dataset.migration = String(m.id);
      card.dataset.state = m.state;
      const h = el("h3", "#" + m.id + " " + m.vm + ": " + m.source + " → " + (m.target || "?"));
      h.append(el("span", m.state, "state"));
      card.append(h);

      const r = latestRound(m);
      const mem = memory.get(m.vm);
      const sent = m.rounds.reduce((a, x) => a + x.bytes_sent, 0);
      const facts = el("p", null, "facts");
      if (r) {
        const p = el("progress");
        p.max = 1;
        // Pre-copy's progress: how much of the memory is no longer dirty after the last round.
        p.value = mem ? Math.max(0, Math.min(1, 1 - r.dirty_bytes / mem)) : 0;
        facts.append(p, document.createTextNode(
          "round " + r.round + " · cap " + rate(r.cap_bytes_per_s) + " · dirty " +
          rate(r.dirty_rate_bytes_per_s) + " · " + bytes(r.dirty_bytes) + " left dirty · " +
          bytes(sent) + " sent" + (mem ? " of " + bytes(mem) : "") + " · policy " + m.policy));
      } else {
        facts.textContent = "no round ended yet · policy " + m.policy;
      }
      card.append(facts);
      if (m.rounds.length) {
        card.append(chart({
          series: [
            { name: "cap", cls: "s-cap", points: m.rounds.map((x) => [x.round, x.cap_bytes_per_s]) },
            { name: "dirty rate", cls: "s-dirty", points: m.rounds.map((x) => [x.round, x.dirty_rate_bytes_per_s]) },
          ],
          xLabel: (x) => "r" + x,
          xTicks: roundTicks(m.rounds),
          yLabel: rate,
          label: "per-round cap and dirty rate of migration " + m.id,
        }));
      }
      return card;
    });
    $("migrations").replaceChildren(...cards);
    $("migrations-empty").classList.toggle("hidden", migrations.length > 0);
    $("migrations-count").textContent = migrations.length ? "(" + migrations.length + ")" : "";
  }

  function roundTicks(rounds) {
    const n = rounds.length;
    const step = Math.max(1, Math.ceil(n / 10));
    const ticks = [];
    for (let i = 0; i < n; i += step) ticks.push(rounds[i].round);
    return ticks;
  }

  function renderBandwidth() {
    const pts = state.bandwidth.map((s) => [s.t, s.v]);
    const now = Date.now();
    const series = [{ name: "in use", cls: "s-bw", points: pts }];
    const lines = [];
    if (typeof state.budget === "number") {
      lines.push({ name: "budget " + rate(state.budget), cls: "s-budget", y: state.budget });
    }
    $("budget-note").textContent = typeof state.budget === "number"
      ? "The dashed line is the shared budget (" + rate(state.budget) + ")."
      : "The RMS has no bandwidth budget: no budget line.";
    // The window: what was seen, at least a minute, at most HISTORY_MS.
    const first = pts.length ? pts[0][0] : now;
    const span = Math.min(HISTORY_MS, Math.max(MIN_WINDOW_MS, now - first));
    const ticks = [];
    for (let k = 0; k <= 6; k++) ticks.push(now - span + (k * span) / 6);
    const current = pts.length ? pts[pts.length - 1][1] : 0;
    $("bandwidth-now").textContent = "Now: " + rate(current) + ".";
    const c = chart({
      width: 1200,
      height: 260,
      series: series,
      lines: lines,
      xMin: now - span,
      xMax: now,
      xTicks: ticks,
      xLabel: (t) => {
        const s = Math.round((now - t) / 1000);
        return s === 0 ? "now" : "-" + s + " s";
      },
      yLabel: rate,
      dots: false,
      label: "migration bandwidth in use over time",
    });
    c.id = "bandwidth-chart";
    c.dataset.samples = String(pts.length);
    c.dataset.current = String(pts.length ? pts[pts.length - 1][1] : 0);
    c.dataset.budget = typeof state.budget === "number" ? String(state.budget) : "none";
    $("bandwidth").replaceChildren(c);
  }

  // A round top for an axis of bytes: 4 steps of 1, 2, 2.5, 5 or 10 times a power of 1024
  // times a power of 10, so the labels read 0, 250 MiB/s, 500 MiB/s…
  function niceMax(v) {
    if (!(v > 0) || !isFinite(v)) return 1;
    const unit = Math.pow(1024, Math.max(0, Math.floor(Math.log(v) / Math.log(1024))));
    const raw = v / unit / 4;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((x) => x >= raw) || 10 * p;
    return step * 4 * unit;
  }

  // A line chart as inline SVG: `series` of [x, y] points, horizontal `lines` (a budget).
  function chart(o) {
    const W = o.width || 640, H = o.height || 220, L = 78, R = 12, T = 22, B = 26;
    const xs = [], ys = [0];
    for (const s of o.series) for (const [x, y] of s.points) { xs.push(x); ys.push(y); }
    for (const l of o.lines || []) ys.push(l.y);
    let xMin = o.xMin !== undefined ? o.xMin : Math.min(...xs);
    let xMax = o.xMax !== undefined ? o.xMax : Math.max(...xs);
    if (!(xMax > xMin)) { xMin -= 1; xMax += 1; }
    // At least 4 MiB/s high: an idle chart reads 0 to 4 MiB/s, not fractions of a byte.
    const yMax = niceMax(Math.max(Math.max(...ys) * 1.05, 4 * 1024 * 1024));
    const px = (x) => L + ((x - xMin) / (xMax - xMin)) * (W - L - R);
    const py = (y) => H - B - (y / yMax) * (H - T - B);

    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", role: "img" });
    root.append(svg("title", {}, o.label));
    for (let k = 0; k <= 4; k++) {
      const y = (yMax * k) / 4;
      root.append(svg("line", { x1: L, x2: W - R, y1: py(y), y2: py(y), class: k ? "grid" : "axis" }));
      root.append(svg("text", { x: L - 6, y: py(y) + 4, "text-anchor": "end" }, o.yLabel(y)));
    }
    root.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    for (const x of o.xTicks || []) {
      root.append(svg("text", { x: px(x), y: H - 8, "text-anchor": "middle" }, o.xLabel(x)));
    }
    for (const l of o.lines || []) {
      root.append(svg("line", { x1: L, x2: W - R, y1: py(l.y), y2: py(l.y), class: l.cls }));
    }
    for (const s of o.series) {
      if (!s.points.length) continue;
      const p = s.points.map(([x, y]) => px(x).toFixed(1) + "," + py(y).toFixed(1)).join(" ");
      root.append(svg("polyline", { points: p, class: s.cls, "data-series": s.name }));
      if (o.dots !== false) {
        for (const [x, y] of s.points) root.append(svg("circle", { cx: px(x), cy: py(y), r: 3, class: "dot " + s.cls }));
      }
    }
    // The legend, top right.
    let lx = W - R;
    const legend = o.series.map((s) => [s.name, s.cls]).concat((o.lines || []).map((l) => [l.name, l.cls]));
    for (let i = legend.length - 1; i >= 0; i--) {
      const t = svg("text", { x: lx, y: 13, "text-anchor": "end", class: "legend " + legend[i][1] }, "— " + legend[i][0]);
      root.append(t);
      lx -= 14 + 7 * (legend[i][0].length + 2);
    }
    return root;
  }

  // --- start -------------------------------------------------------------------------------

  function start() {
    takeTokenFromFragment();
    window.addEventListener("hashchange", () => { takeTokenFromFragment(); loop(); });
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = $("token-input").value.trim();
      if (v) sessionStorage.setItem(TOKEN_KEY, v);
      $("token-input").value = "";
      state.delay = POLL_MS;
      loop();
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      loop();
    });
    loop();
  }

  // For tests and the curious: how many polls succeeded.
  window.livemigDashboard = { polls: () => state.polls };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
