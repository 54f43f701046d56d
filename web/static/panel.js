// sobot-panel: the panel script. Plain modern JS, no dependencies.
// - tabs, card and ticket sends (audit first, then postMessage to the verified parent origin only)
// - SPEC §4: listens for Sobot's `selected` message, relays it over /ws, swaps in the pushed panel
"use strict";
(function () {
  const main = document.getElementById("panel");
  if (!main) return;
  const boot = JSON.parse(main.dataset.boot || "{}");
  const i18n = document.getElementById("panel-i18n");
  const messages = i18n ? JSON.parse(i18n.textContent || "{}") : {};
  let token = boot.token;
  let partnerId = boot.partnerId || "";
  let parentOrigin = null;

  function t(code, params) {
    const text = messages[code] || code;
    return text.replace(/\{(\w+)\}/g, (m, k) => (params && k in params ? String(params[k]) : m));
  }

  // --- origins -------------------------------------------------------------------------------
  function patternToRegExp(pattern) {
    const [scheme, rest] = pattern.split("://");
    const [host, port] = rest.split(/:(?=[^:]*$)/);
    const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    let hostRe = host.startsWith("*.") ? "(?:[a-z0-9-]+\\.)+" + esc(host.slice(2)) : esc(host);
    let portRe = port === undefined ? "" : port === "*" ? ":\\d{1,5}" : ":" + esc(port);
    if (rest.indexOf(":") === -1) portRe = "";
    return new RegExp("^" + esc(scheme) + "://" + hostRe + portRe + "$", "i");
  }
  const originRes = (boot.origins || []).map(patternToRegExp);
  function originAllowed(origin) {
    if (!origin || origin === "null") return false;
    if (boot.allowSelf && origin === location.origin) return true;
    return originRes.some((re) => re.test(origin));
  }
  function initialParentOrigin() {
    if (window.parent === window) return null;
    const candidates = [];
    if (location.ancestorOrigins && location.ancestorOrigins.length) candidates.push(location.ancestorOrigins[0]);
    if (document.referrer) {
      try { candidates.push(new URL(document.referrer).origin); } catch (e) { /* not a URL */ }
    }
    return candidates.find(originAllowed) || null;
  }
  parentOrigin = initialParentOrigin();

  // --- status line ---------------------------------------------------------------------------
  const statusEl = document.getElementById("panel-status");
  function showStatus(text, bad) {
    if (!statusEl) return;
    statusEl.textContent = text || "";
    statusEl.hidden = !text;
    statusEl.classList.toggle("bad", !!bad);
  }

  // --- tabs ----------------------------------------------------------------------------------
  function selectTab(view, focus) {
    const tabs = main.querySelectorAll('[role="tab"]');
    tabs.forEach((tab) => {
      const on = tab.dataset.view === view;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      const pane = document.getElementById(tab.getAttribute("aria-controls"));
      if (pane) pane.hidden = !on;
      if (on && focus) tab.focus();
    });
  }
  let currentView = null;
  main.addEventListener("click", (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (tab) { currentView = tab.dataset.view; selectTab(currentView); return; }
    const sendButton = event.target.closest("button[data-send]");
    if (sendButton) { sendCard(sendButton); return; }
    const prefill = event.target.closest("button[data-prefill]");
    if (prefill) prefillTicket(JSON.parse(prefill.dataset.prefill));
  });
  main.addEventListener("keydown", (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (!tab || !["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
    const tabs = Array.from(main.querySelectorAll('[role="tab"]'));
    let i = tabs.indexOf(tab);
    if (event.key === "ArrowLeft") i = (i - 1 + tabs.length) % tabs.length;
    if (event.key === "ArrowRight") i = (i + 1) % tabs.length;
    if (event.key === "Home") i = 0;
    if (event.key === "End") i = tabs.length - 1;
    currentView = tabs[i].dataset.view;
    selectTab(currentView, true);
    event.preventDefault();
  });
  main.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-send-form]");
    if (!form) return;
    event.preventDefault();
    sendTicket(form);
  });

  function prefillTicket(values) {
    const form = main.querySelector("form[data-send-form]");
    if (!form) return;
    for (const [name, value] of Object.entries(values)) {
      const input = form.elements.namedItem(name);
      if (input && "value" in input) input.value = value;
    }
    if (main.querySelector('[role="tab"]')) selectTab("new-ticket");
    const first = form.querySelector("input, textarea, select");
    if (first) first.focus();
  }

  // --- sending: audit first, then postMessage to the verified parent --------------------------
  function newEventId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function submit(kind, data, holder) {
    if (!parentOrigin) return { ok: false, message: t("parent_not_allowed") };
    // A retried click reuses the same id, so the audit stream never holds it twice.
    holder.dataset.eventId = holder.dataset.eventId || newEventId();
    let response;
    try {
      response = await fetch("/panel/send?lang=" + encodeURIComponent(boot.lang), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token, kind, id: holder.dataset.eventId, data }),
      });
    } catch (e) {
      return { ok: false, message: t("network_error") };
    }
    let body = {};
    try { body = await response.json(); } catch (e) { body = { ok: false, message: t("internal_error") }; }
    if (!response.ok || !body.ok) return body.ok === false ? body : { ok: false, message: t("internal_error") };
    window.parent.postMessage(body.message, parentOrigin);
    delete holder.dataset.eventId;
    return body;
  }

  function setResult(el, text, ok) {
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("ok", !!ok);
    el.classList.toggle("bad", !ok);
  }

  async function sendCard(button) {
    const result = button.parentElement.querySelector(".send-result");
    button.disabled = true;
    setResult(result, t("sending"), true);
    try {
      const body = await submit(button.dataset.send, JSON.parse(button.dataset.card), button);
      if (body.ok) setResult(result, t(body.spooled ? "audit_spooled" : body.duplicate ? "sent_again" : "sent"), true);
      else setResult(result, (body.problems || []).map((p) => p.message).join("；") || body.message, false);
    } finally {
      button.disabled = false;
    }
  }

  async function sendTicket(form) {
    const data = {};
    for (const el of form.querySelectorAll("input, textarea, select")) {
      if (el.name) data[el.name] = el.value;
      el.removeAttribute("aria-invalid");
    }
    form.querySelectorAll(".field-error").forEach((el) => (el.textContent = ""));
    const button = form.querySelector('button[type="submit"]');
    const result = form.querySelector(".send-result");
    button.disabled = true;
    setResult(result, t("sending"), true);
    try {
      const body = await submit("ticket", data, form);
      if (body.ok) { setResult(result, t("ticket_sent"), true); return; }
      setResult(result, body.message, false);
      let focused = false;
      for (const problem of body.problems || []) {
        const err = form.querySelector("#err-" + CSS.escape(problem.field));
        const input = form.elements.namedItem(problem.field);
        if (err) err.textContent = problem.message;
        if (input && input.setAttribute) {
          input.setAttribute("aria-invalid", "true");
          if (!focused) { input.focus(); focused = true; }
        }
      }
    } finally {
      button.disabled = false;
    }
  }

  // --- live: relay `selected` over the websocket and swap in what the server pushes -----------
  let socket = null;
  let attempts = 0;
  let pingTimer = null;
  let closedByUs = false;
  const pending = [];
  let nextRequest = 1;

  // The token goes in the first frame (a hello), never in the URL where proxies and logs keep it.
  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/ws?lang=" + encodeURIComponent(boot.lang || "zh");
  }

  let ready = false;
  function send(frame) {
    if (socket && ready && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
    else pending.push(frame);
  }

  function connect() {
    if (!("WebSocket" in window)) return;
    socket = new WebSocket(wsUrl());
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "hello", token, view: boot.view }));
    });
    socket.addEventListener("message", (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type === "ready") onReady();
      else if (frame.type === "panel") applyPanel(frame);
      else if (frame.type === "error") showError(frame);
    });
    socket.addEventListener("close", () => {
      ready = false;
      clearInterval(pingTimer);
      if (closedByUs) return;
      attempts += 1;
      showStatus(t("reconnecting"));
      // exponential backoff with full jitter, capped at 15 s
      const delay = Math.random() * Math.min(15000, 500 * 2 ** Math.min(attempts, 5));
      setTimeout(connect, delay);
    });
  }

  function onReady() {
    ready = true;
    const reconnected = attempts > 0;
    attempts = 0;
    showStatus("");
    if (reconnected) socket.send(JSON.stringify({ type: "resync", view: boot.view }));
    while (pending.length) socket.send(JSON.stringify(pending.shift()));
    clearInterval(pingTimer);
    pingTimer = setInterval(() => send({ type: "ping" }), 25000);
  }

  function applyPanel(frame) {
    if (frame.token) token = frame.token;
    if (typeof frame.partnerId === "string") partnerId = frame.partnerId;
    const waiting = main.querySelector("[data-testid=waiting]");
    main.innerHTML = frame.html;
    main.dataset.partnerId = partnerId;
    if (currentView && main.querySelector('[role="tab"]')) selectTab(currentView);
    if (waiting) showStatus("");
    document.dispatchEvent(new CustomEvent("panel:updated", { detail: { partnerId } }));
  }

  function showError(frame) {
    showStatus(frame.message || t(frame.code), true);
    setTimeout(() => showStatus(""), 6000);
  }

  window.addEventListener("message", (event) => {
    // Only Sobot's own origins may steer the panel (PANEL_HOST_ORIGINS).
    if (event.source !== window.parent || !originAllowed(event.origin)) return;
    const data = event.data;
    if (!data || typeof data !== "object" || data.name !== "selected") return;
    parentOrigin = event.origin;
    send({
      type: "selected",
      id: nextRequest++,
      view: boot.view,
      query: data.query || {},
      params: data.params === undefined ? null : data.params,
      partnerId: data.partnerId === undefined ? null : String(data.partnerId),
      uid: data.visitData && data.visitData.uid !== undefined ? String(data.visitData.uid) : null,
    });
  });
  window.addEventListener("pagehide", () => { closedByUs = true; if (socket) socket.close(1000); });

  main.dataset.partnerId = partnerId;
  connect();
  window.sobotPanel = { get parentOrigin() { return parentOrigin; }, get partnerId() { return partnerId; } };
})();
