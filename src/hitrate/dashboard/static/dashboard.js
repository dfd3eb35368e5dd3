// hitrate dashboard: polls /api/stats and redraws. No framework, one chart library (uPlot).
(function () {
  "use strict";
  const body = document.body;
  const params = new URLSearchParams(location.search);
  const refreshMs = Number(params.get("refresh_ms")) || Number(body.dataset.refreshMs) || 2000;
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                   "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const state = { updates: 0, stats: null, previous: null, rateChart: null, trafficChart: null,
                  families: "" };
  window.hitrateDashboard = state;

  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat("en");
  const rate = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
  const num = (n) => (n === null || n === undefined ? "–" : fmt.format(n));
  const pct = (n) => (n === null || n === undefined ? "–" : n.toFixed(2) + " %");
  const ms = (s) => (s === null || s === undefined ? "–" : (s * 1000).toFixed(1) + " ms");
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "K", "M", "G"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? n + "B" : n.toFixed(2) + units[i];
  }

  function chartWidth(el) { return Math.max(300, el.clientWidth - 16); }

  function rateData(h) {
    const names = Object.keys(h.families);
    return [h.minutes, h.total.hit_rate, ...names.map((n) => h.families[n].hit_rate)];
  }

  function trafficData(h) {
    const perSecond = (xs) => xs.map((x) => Math.round((x / 60) * 100) / 100);
    return [h.minutes, perSecond(h.total.hits), perSecond(h.total.misses)];
  }

  function makeCharts(h) {
    const names = Object.keys(h.families);
    for (const chart of [state.rateChart, state.trafficChart]) if (chart) chart.destroy();
    const rateEl = $("rate-chart");
    const trafficEl = $("traffic-chart");
    rateEl.textContent = "";
    trafficEl.textContent = "";
    state.rateChart = new uPlot({
      width: chartWidth(rateEl), height: 240,
      scales: { x: { time: true }, y: { range: [0, 100] } },
      axes: [{}, { values: (u, vals) => vals.map((v) => v + " %") }],
      series: [
        {},
        { label: "all families", stroke: "#1d1d1f", width: 2.5, value: (u, v) => pct(v) },
        ...names.map((name, i) => ({
          label: name, stroke: PALETTE[i % PALETTE.length], width: 1.5, value: (u, v) => pct(v),
        })),
      ],
    }, rateData(h), rateEl);
    state.trafficChart = new uPlot({
      width: chartWidth(trafficEl), height: 200,
      scales: { x: { time: true } },
      series: [
        {},
        { label: "hits/s", stroke: "#2ca02c", fill: "rgba(44,160,44,0.12)", width: 1.5 },
        { label: "misses/s", stroke: "#d62728", fill: "rgba(214,39,40,0.12)", width: 1.5 },
      ],
    }, trafficData(h), trafficEl);
    state.families = names.join("\u0000");
  }

  function renderCharts(h) {
    if (!h) return;
    const names = Object.keys(h.families).join("\u0000");
    if (!state.rateChart || names !== state.families) {
      makeCharts(h);
    } else {
      state.rateChart.setData(rateData(h));
      state.trafficChart.setData(trafficData(h));
    }
  }

  function renderGauge(s) {
    const gauge = $("gauge");
    gauge.dataset.level = s.verdict_level;
    $("gauge-arc").setAttribute("stroke-dasharray", Math.max(0, Math.min(100, s.hit_rate)) + " 100");
    $("hit-rate").textContent = s.hits + s.misses ? pct(s.hit_rate) : "–";
    $("verdict").textContent = s.verdict;
  }

  function renderTiles(s, prev) {
    if (prev && s.taken_at > prev.taken_at) {
      const dt = s.taken_at - prev.taken_at;
      $("hits-per-s").textContent = rate.format(Math.max(0, s.hits - prev.hits) / dt);
      $("misses-per-s").textContent = rate.format(Math.max(0, s.misses - prev.misses) / dt);
    }
    $("hits").textContent = num(s.hits);
    $("misses").textContent = num(s.misses);
    $("memory").textContent = s.memory_used;
    $("keys").textContent = num(s.keys);
    $("evicted").textContent = num(s.evicted_keys);
    $("expired").textContent = num(s.expired_keys);
    $("server-rate").textContent = pct(s.server_hit_rate);
  }

  // A Redis Cluster: the tiles show the sums, this table each primary.
  function renderNodes(s) {
    const nodes = s.nodes || [];
    $("nodes-section").hidden = nodes.length < 2;
    const body = $("nodes").querySelector("tbody");
    body.replaceChildren(
      ...nodes.map((n) => {
        const tr = document.createElement("tr");
        tr.append(
          cell(n.node), cell(bytes(n.memory_used_bytes), "r"), cell(num(n.keys), "r"),
          cell(num(n.evicted_keys), "r"), cell(num(n.expired_keys), "r"),
          cell(num(n.keyspace_hits), "r"), cell(num(n.keyspace_misses), "r"),
        );
        return tr;
      }),
    );
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function renderTable(s) {
    const rows = s.families.map((f) => {
      const tr = document.createElement("tr");
      tr.dataset.family = f.family;
      const badge = document.createElement("span");
      badge.className = "badge " + f.verdict_level;
      badge.textContent = f.verdict;
      const verdict = document.createElement("td");
      verdict.appendChild(badge);
      tr.append(
        cell(f.family), cell(pct(f.hit_rate), "r hit-rate"), verdict, cell(num(f.hits), "r"),
        cell(num(f.misses), "r"), cell(num(f.stale_hits), "r"), cell(num(f.loads), "r"),
        cell(ms(f.load_p50), "r"), cell(ms(f.load_p99), "r"),
        cell(num(f.errors + f.fail_open), "r"), cell(num(f.keys), "r"),
        cell(bytes(f.memory_bytes), "r"));
      return tr;
    });
    $("families").tBodies[0].replaceChildren(...rows);
  }

  function setStatus(text, error) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(error));
  }

  async function tick() {
    try {
      const response = await fetch("/api/stats", { cache: "no-store" });
      const s = await response.json();
      if (!response.ok) throw new Error(s.error || response.statusText);
      state.previous = state.stats;
      state.stats = s;
      renderGauge(s);
      renderTiles(s, state.previous);
      renderNodes(s);
      renderTable(s);
      renderCharts(s.history);
      state.updates += 1;
      body.dataset.updates = String(state.updates);
      body.dataset.hitRate = String(s.hit_rate);
      setStatus("updated " + new Date(s.taken_at * 1000).toLocaleTimeString() +
                " · every " + refreshMs / 1000 + " s");
    } catch (err) {
      setStatus("cannot read stats: " + err.message, true);
    } finally {
      setTimeout(tick, refreshMs);
    }
  }

  window.addEventListener("resize", () => {
    for (const [chart, id] of [[state.rateChart, "rate-chart"], [state.trafficChart, "traffic-chart"]]) {
      if (chart) chart.setSize({ width: chartWidth($(id)), height: chart.height });
    }
  });
  tick();
})();
