// sobot-panel ops dashboard: the live feed (Server-Sent Events), counters that move, charts that follow.
// The server renders everything first; this script only keeps it current. No dependencies.
"use strict";

(function () {
  const boot = JSON.parse(document.getElementById("ops-boot").textContent);
  const text = boot.text;
  const live = document.getElementById("ops-live");
  const tbody = document.getElementById("sends");
  const emptyNote = document.getElementById("sends-empty");
  const MAX_ROWS = 200;
  const REFRESH_MS = 30000;
  const seen = new Set(Array.from(tbody.querySelectorAll("tr[data-entry-id]"), (row) => row.dataset.entryId));

  // --- formatting (Asia/Shanghai, like the server) -----------------------------------------------
  const clock = new Intl.DateTimeFormat("en-GB", {
    timeZone: "Asia/Shanghai", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    second: "2-digit", hourCycle: "h23",
  });
  function parts(ms) {
    const out = {};
    for (const part of clock.formatToParts(new Date(ms))) out[part.type] = part.value;
    return out;
  }
  function rowTime(ms) {
    const p = parts(ms);
    return `${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
  }
  function barLabel(ms, hourly) {
    const p = parts(ms);
    return hourly ? `${p.hour}:00` : `${p.hour}:${p.minute}`;
  }
  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, (match, name) => (name in values ? String(values[name]) : match));
  }

  // --- counters ------------------------------------------------------------------------------------
  function flash(element) {
    element.classList.remove("bump");
    void element.offsetWidth; // restart the animation
    element.classList.add("bump");
  }
  function setCount(element, value) {
    if (element.textContent !== String(value)) {
      element.textContent = String(value);
      flash(element);
    }
  }
  function bump(key) {
    for (const element of document.querySelectorAll(`[data-count="${CSS.escape(key)}"]`)) {
      setCount(element, (parseInt(element.textContent, 10) || 0) + 1);
    }
  }
  function bumpAll(item) {
    for (const window of ["hour", "day"]) {
      bump(`${window}:total`);
      for (const name of ["kind", "surface", "agent"]) {
        const value = item[name];
        if (value) bump(`${window}:${name}:${value}`);
      }
    }
    const length = document.querySelector('[data-stat="length"]');
    if (length) {
      length.textContent = ((parseInt(length.textContent.replace(/,/g, ""), 10) || 0) + 1).toLocaleString("en-US");
    }
    // an agent not in the table yet may now belong to the top 10: let the server rank them
    if (item.agent && !document.querySelector(`[data-count="day:agent:${CSS.escape(item.agent)}"]`)) scheduleRefresh(500);
  }

  // --- charts --------------------------------------------------------------------------------------
  function niceTop(peak) {
    for (const step of [4, 5, 10, 20, 25, 50]) if (peak <= step) return step;
    const magnitude = Math.pow(10, String(peak).length - 1);
    return Math.ceil(peak / magnitude) * magnitude;
  }
  function drawChart(svg, series) {
    const hourly = svg.id === "chart-hours";
    const rects = svg.querySelectorAll("rect.bar");
    const top = niceTop(Math.max(0, ...series.map((point) => point[1])));
    const plotTop = parseFloat(svg.dataset.plotTop);
    const plot = parseFloat(svg.dataset.plotHeight);
    let total = 0;
    let peak = null;
    series.forEach(([key, value], index) => {
      const rect = rects[index];
      if (!rect) return;
      const height = Math.round((plot * value / top) * 100) / 100;
      rect.setAttribute("y", String(plotTop + plot - height));
      rect.setAttribute("height", String(height));
      rect.dataset.key = String(key);
      rect.dataset.value = String(value);
      rect.querySelector("title").textContent = `${barLabel(key, hourly)} · ${value}`;
      total += value;
      if (value && (!peak || value > peak[1])) peak = [key, value];
    });
    for (const tick of svg.querySelectorAll("text.tick")) {
      const point = series[parseInt(tick.dataset.bar, 10)];
      if (point) tick.textContent = barLabel(point[0], hourly);
    }
    svg.querySelector("[data-chart-top]").textContent = String(top);
    svg.querySelector("[data-chart-mid]").textContent = String(top / 2);
    svg.querySelector("[data-chart-desc]").textContent = peak
      ? fill(text.chart_desc, { total, peak: peak[1], at: barLabel(peak[0], hourly) })
      : text.chart_desc_empty;
  }
  function chartSeries(svg) {
    return Array.from(svg.querySelectorAll("rect.bar"), (rect) => [Number(rect.dataset.key), Number(rect.dataset.value)]);
  }
  function bumpChart(id, key) {
    const svg = document.getElementById(id);
    const series = chartSeries(svg);
    const point = series.find((candidate) => candidate[0] === key);
    if (!point) return false;
    point[1] += 1;
    drawChart(svg, series);
    return true;
  }

  // --- the table -----------------------------------------------------------------------------------
  function matches(item) {
    const filters = boot.filters;
    const has = (value, needle) => !needle || (value || "").toLowerCase().includes(needle.toLowerCase());
    return (!filters.kind || item.kind === filters.kind) && has(item.agent, filters.agent) &&
      has(item.partnerId, filters.customer);
  }
  function cell(row, value, className) {
    const td = row.insertCell();
    if (className) td.className = className;
    if (value instanceof Node) td.append(value); else td.textContent = value;
    return td;
  }
  function addRow(item) {
    const row = document.createElement("tr");
    row.dataset.entryId = item.entryId;
    row.className = "fresh";
    const time = document.createElement("time");
    time.dateTime = String(item.at);
    time.textContent = rowTime(item.at);
    cell(row, time, "time");
    const kind = document.createElement("span");
    kind.className = `kind kind-${item.kind}`;
    kind.textContent = boot.kinds[item.kind] || item.kind;
    cell(row, kind);
    cell(row, item.surface);
    cell(row, item.agent, "ellipsis").title = item.agent;
    cell(row, item.partnerId, "mono");
    cell(row, item.summary, "summary");
    const link = document.createElement("a");
    link.href = `${boot.base || ""}/ops/entries/${encodeURIComponent(item.entryId)}${boot.langSuffix}`;
    link.textContent = text.view;
    cell(row, link);
    tbody.prepend(row);
    while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
    emptyNote.hidden = true;
  }

  function onSend(item) {
    if (!item || !item.entryId || seen.has(item.entryId)) return;
    seen.add(item.entryId);
    bumpAll(item);
    const minuteOk = bumpChart("chart-minutes", Math.floor(item.at / 60000) * 60000);
    const hourOk = bumpChart("chart-hours", Math.floor(item.at / 3600000) * 3600000);
    if (!minuteOk || !hourOk) scheduleRefresh(1000); // a new minute began: let the server redraw the window
    if (boot.live && matches(item)) addRow(item);
  }

  // --- the summary, now and then -------------------------------------------------------------------
  let refreshTimer = null;
  function scheduleRefresh(delay) {
    if (refreshTimer) clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, delay);
  }
  function drawAgents(agents) {
    const body = document.querySelector("[data-agents]");
    body.replaceChildren();
    if (!agents.length) {
      const row = body.insertRow();
      row.className = "empty-row";
      const td = cell(row, body.dataset.empty, "muted");
      td.colSpan = 3;
      return;
    }
    for (const [name, hour, day] of agents) {
      const row = body.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.className = "ellipsis";
      th.title = name;
      th.textContent = name;
      row.append(th);
      cell(row, String(hour), "num").dataset.count = `hour:agent:${name}`;
      cell(row, String(day), "num").dataset.count = `day:agent:${name}`;
    }
  }
  async function refresh() {
    refreshTimer = null;
    try {
      const response = await fetch(`${boot.base || ""}/ops/api/summary`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const summary = await response.json();
      drawAgents(summary.agents);
      for (const element of document.querySelectorAll("[data-count]")) {
        setCount(element, summary.counts[element.dataset.count] || 0);
      }
      drawChart(document.getElementById("chart-minutes"), summary.series.minute);
      drawChart(document.getElementById("chart-hours"), summary.series.hour);
      const length = document.querySelector('[data-stat="length"]');
      if (length) length.textContent = summary.stream.length.toLocaleString("en-US");
      const group = document.querySelector('[data-stat="group"]');
      if (group && summary.stream.group) {
        const state = summary.stream.group;
        group.textContent = fill(text.group_state, { lag: state.lag === null ? "?" : state.lag, pending: state.pending });
      }
    } catch (error) {
      // the next refresh tries again; the live feed keeps the numbers moving meanwhile
    } finally {
      if (!refreshTimer) scheduleRefresh(REFRESH_MS);
    }
  }
  scheduleRefresh(REFRESH_MS);

  // --- the live feed -------------------------------------------------------------------------------
  function setLive(state) {
    live.dataset.state = state;
    if (state === "open") live.textContent = boot.live ? text.live_open : text.live_paused;
    if (state === "retry") live.textContent = text.live_retry;
  }
  // EventSource retries by itself after a dropped stream (sending Last-Event-ID); after a refusal (a replica
  // shutting down answers 503) it gives up, so we open a new one, from the last entry we saw, with backoff.
  let source = null;
  let lastId = boot.since;
  let backoff = 2000;
  function connect() {
    source = new EventSource(`${boot.base || ""}/ops/feed${lastId ? `?since=${encodeURIComponent(lastId)}` : ""}`);
    source.addEventListener("open", () => {
      backoff = 2000;
      setLive("open");
    });
    source.addEventListener("error", () => {
      setLive("retry");
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, backoff);
        backoff = Math.min(backoff * 2, 30000);
      }
    });
    source.addEventListener("send", (event) => {
      if (event.lastEventId) lastId = event.lastEventId;
      try {
        onSend(JSON.parse(event.data));
      } catch (error) {
        // a malformed frame is skipped; the next refresh corrects the counts
      }
    });
  }
  connect();
  window.addEventListener("pagehide", () => source && source.close());
})();
