// sobot-panel: the panel script. Plain modern JS, no dependencies.
// - tabs, card and ticket sends (audit first, then postMessage to the verified parent origin only)
// - SPEC §4: listens for Sobot's `selected` message, relays it over /ws, shows the pushed panel
// - what the panel is doing is always visible: switching, a refused switch, a lost connection, an ended
//   session each dim the content, make it inert and say so in the banner at the top
// - pushes patch what changed: a half-typed ticket, the focus and the open tab survive them
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
  // The server's clock minus ours, so a sign's age is judged as the server will judge it.
  const skewMs = typeof boot.now === "number" ? boot.now - Date.now() : 0;

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

  // --- state: what the agent may rely on -------------------------------------------------------
  // phase: "live" (the customer shown is the conversation's), "switching" (Sobot moved on, the new
  // customer is not shown yet), "failed" (the switch was refused), "ended" (the session is over).
  // `connected` is apart from it: offline while live dims the panel and says so, but a customer that
  // is still current stays usable (sends go over HTTP).
  let phase = "live";
  let socket = null;
  let attempts = 0; // failed connection attempts in a row
  let pingTimer = null;
  let closedByUs = false;
  let connected = false;
  let everConnected = false;
  let switchEpoch = 0; // bumped by every selected: a send started before it is not handed over after it
  let pendingSwitch = null; // {frame, who}: the latest selected not yet shown
  let inFlightId = null; // the id of the selected the server is working on
  let failure = null; // {reason, frame}
  let notice = null; // a passing message (an error frame that is not about a switch)
  let noticeTimer = null;
  let signed = { url: location.href, at: boot.signedAt || null }; // the latest verified context's own URL
  const statusEl = document.getElementById("panel-status");
  const statusText = statusEl ? statusEl.querySelector(".state-text") : null;
  const statusAction = statusEl ? statusEl.querySelector(".state-action") : null;
  let statusActionHandler = null;
  const counters = { pushes: 0, changes: 0 };

  function render() {
    const offline = !connected && (everConnected || attempts >= 2);
    const dim = phase !== "live" ? phase : offline ? "offline" : "live";
    main.dataset.state = dim;
    main.setAttribute("aria-busy", phase === "switching" ? "true" : "false");
    // Nothing of a customer that is not current can be clicked, focused or sent from.
    main.inert = phase !== "live";
    let text = "", kind = "", action = null;
    if (phase === "switching") {
      text = pendingSwitch && pendingSwitch.who ? t("switching_to", { who: pendingSwitch.who }) : t("switching");
      if (offline) { text += " " + t("reconnecting"); kind = "warn"; }
    } else if (phase === "failed") {
      text = t("switch_failed", { reason: failure ? failure.reason : "" });
      kind = "bad";
      action = { label: t("retry"), run: retrySwitch };
    } else if (phase === "ended") {
      text = t("session_ended");
      kind = "bad";
      action = { label: t("reload"), run: () => location.reload() };
    } else if (offline) {
      text = t("offline");
      kind = "warn";
    } else if (notice) {
      text = notice;
      kind = "bad";
    }
    if (!statusEl) return;
    statusEl.hidden = !text;
    statusEl.className = "state-banner" + (kind ? " " + kind : "");
    if (statusText) statusText.textContent = text;
    if (statusAction) {
      statusAction.hidden = !action;
      statusAction.textContent = action ? action.label : "";
      statusActionHandler = action ? action.run : null;
    }
  }
  if (statusAction) statusAction.addEventListener("click", () => { if (statusActionHandler) statusActionHandler(); });

  function showNotice(text) {
    notice = text;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { notice = null; render(); }, 6000);
    render();
  }

  // --- tabs ----------------------------------------------------------------------------------
  let currentView = null;
  function selectTab(view, focus) {
    const tabs = main.querySelectorAll('[role="tab"]');
    if (!tabs.length) return;
    if (!Array.from(tabs).some((tab) => tab.dataset.view === view)) view = tabs[0].dataset.view;
    tabs.forEach((tab) => {
      const on = tab.dataset.view === view;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      const pane = document.getElementById(tab.getAttribute("aria-controls"));
      if (pane) pane.hidden = !on;
      if (on && focus) tab.focus();
    });
  }
  main.addEventListener("click", (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (tab) { currentView = tab.dataset.view; selectTab(currentView); return; }
    if (phase !== "live") return; // inert already; a programmatic click changes nothing either
    const sendButton = event.target.closest("button[data-send]");
    if (sendButton) { sendCard(sendButton); return; }
    const prefill = event.target.closest("button[data-prefill]");
    if (prefill) { prefillTicket(JSON.parse(prefill.dataset.prefill)); return; }
    if (event.target.closest('button[data-action="retry"]')) send({ type: "resync", view: boot.view });
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
    if (phase === "live" && !form.dataset.filed) sendTicket(form);
  });
  // After a filed ticket the form stays locked until the agent starts the next one.
  main.addEventListener("input", (event) => {
    const form = event.target.closest("form[data-send-form]");
    if (form && form.dataset.filed) unlockForm(form);
  });
  main.addEventListener("focusout", () => setTimeout(applyDeferred, 0));

  function prefillTicket(values) {
    const form = main.querySelector("form[data-send-form]");
    if (!form) return;
    unlockForm(form);
    for (const [name, value] of Object.entries(values)) {
      const input = form.elements.namedItem(name);
      if (input && "value" in input) input.value = value;
    }
    if (main.querySelector('[role="tab"]')) { currentView = "new-ticket"; selectTab(currentView); }
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
    const epoch = switchEpoch;
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
    if (response.status === 401) { sessionOver(); return { ok: false, message: t("session_ended") }; }
    if (!response.ok || !body.ok) return body.ok === false ? body : { ok: false, message: t("internal_error") };
    // Sobot moved to another conversation while this was being recorded: never hand it over now.
    if (epoch !== switchEpoch) return { ok: false, message: t("switched_not_sent") };
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

  function lockForm(form, text) {
    form.dataset.filed = "1";
    const button = form.querySelector('button[type="submit"]');
    if (button) { button.disabled = true; button.setAttribute("aria-disabled", "true"); }
    setResult(form.querySelector(".send-result"), text, true);
  }

  function unlockForm(form) {
    if (!form.dataset.filed) return;
    delete form.dataset.filed;
    const button = form.querySelector('button[type="submit"]');
    if (button) { button.disabled = false; button.removeAttribute("aria-disabled"); }
    setResult(form.querySelector(".send-result"), "", true);
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
    let filed = false;
    try {
      const body = await submit("ticket", data, form);
      if (body.ok) {
        // Filed: the form is cleared and locked, so a second click files nothing.
        filed = true;
        form.reset();
        const done = t(body.spooled ? "audit_spooled" : "ticket_sent") + " " + t("ticket_filed_locked");
        lockForm(form, done);
        applyDeferred(done);
        return;
      }
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
      if (!filed) button.disabled = false;
    }
  }

  // --- showing pushes: patch what changed, keep what the agent is doing -------------------------
  let shownHtml = null; // the fragment last applied, as received
  let shownParts = new Map(); // data-part -> its HTML as received
  const deferred = new Map(); // data-part -> a newer version held back while the agent uses the old one

  function partsOf(root) {
    const parts = new Map();
    for (const el of root.children) if (el.dataset && el.dataset.part) parts.set(el.dataset.part, el);
    return parts;
  }

  function inUse(part) {
    const form = part.querySelector("form[data-send-form]");
    if (!form) return false;
    if (form.contains(document.activeElement)) return true;
    for (const el of form.elements) {
      if (el.type === "checkbox" || el.type === "radio") { if (el.checked !== el.defaultChecked) return true; }
      else if (el.tagName === "SELECT") { if (Array.from(el.options).some((o) => o.selected !== o.defaultSelected)) return true; }
      else if ("defaultValue" in el && el.value !== el.defaultValue) return true;
    }
    return false;
  }

  function focusKey(el) {
    if (!el || el === document.body || !main.contains(el)) return null;
    if (el.id) return "#" + CSS.escape(el.id);
    if (el.dataset && el.dataset.key) return '[data-key="' + CSS.escape(el.dataset.key) + '"]';
    return null;
  }

  function replaceAll(html) {
    main.innerHTML = html;
    deferred.clear();
    return 1;
  }

  // Replace only the parts whose HTML changed; a part with a ticket form the agent is using waits.
  // Returns how many parts changed. Parts are compared as the browser serialises them, on both sides.
  function patch(html) {
    const incoming = document.createElement("template");
    incoming.innerHTML = html;
    const fresh = partsOf(incoming.content);
    const current = partsOf(main);
    const sameShape = fresh.size > 0 && fresh.size === current.size && [...fresh.keys()].every((k) => current.has(k));
    if (!sameShape) return replaceAll(html);
    const focused = focusKey(document.activeElement);
    let changed = 0;
    for (const [key, node] of fresh) {
      if (shownParts.get(key) === node.outerHTML) { deferred.delete(key); continue; }
      const old = current.get(key);
      if (inUse(old)) { deferred.set(key, node); continue; }
      deferred.delete(key);
      old.replaceWith(node);
      changed += 1;
    }
    if (focused && !main.contains(document.activeElement)) {
      const again = main.querySelector(focused);
      if (again) again.focus();
    }
    return changed;
  }

  // A held-back part goes in once nobody is using it any more (after a filed ticket, or on leaving it).
  function applyDeferred(filedText) {
    for (const [key, node] of deferred) {
      const old = partsOf(main).get(key);
      if (!old) { deferred.delete(key); continue; }
      if (filedText === undefined && inUse(old)) continue;
      deferred.delete(key);
      node.hidden = old.hidden;
      old.replaceWith(node);
      const form = node.querySelector("form[data-send-form]");
      if (form && filedText !== undefined) lockForm(form, filedText);
    }
  }

  function show(frame, isSwitch) {
    counters.pushes += 1;
    if (typeof frame.partnerId === "string") partnerId = frame.partnerId;
    const waiting = main.querySelector("[data-testid=waiting]");
    if (frame.html === shownHtml && !waiting) return; // identical to what is shown: nothing changes
    const another = main.dataset.partnerId !== partnerId;
    const changed = isSwitch || waiting || another ? replaceAll(frame.html) : patch(frame.html);
    shownHtml = frame.html;
    shownParts = serialisedParts(frame.html);
    main.dataset.partnerId = partnerId;
    if (!changed) return;
    if (currentView) selectTab(currentView);
    counters.changes += 1;
    document.dispatchEvent(new CustomEvent("panel:updated", { detail: { partnerId } }));
  }

  function serialisedParts(html) {
    const holder = document.createElement("template");
    holder.innerHTML = html;
    return new Map([...partsOf(holder.content)].map(([k, el]) => [k, el.outerHTML]));
  }

  // --- switching: Sobot's `selected`, relayed; only the latest one counts ------------------------
  let nextRequest = 1;

  function whoOf(data) {
    const q = data.query || {};
    const pick = (name) => { for (const k in q) if (k.toLowerCase() === name.toLowerCase() && q[k]) return String(q[k]); return ""; };
    return String(data.partnerId || "") || pick("partnerId") || pick("uphone") || pick("tel") || pick("uemail");
  }

  function startSwitch(data) {
    switchEpoch += 1;
    failure = null;
    pendingSwitch = {
      who: whoOf(data),
      frame: {
        type: "selected",
        view: boot.view,
        query: data.query || {},
        params: data.params === undefined ? null : data.params,
        partnerId: data.partnerId === undefined ? null : String(data.partnerId),
        uid: data.visitData && data.visitData.uid !== undefined ? String(data.visitData.uid) : null,
      },
    };
    if (phase === "ended") { reloadFrom(pendingSwitch.frame.query); return; }
    phase = "switching";
    render();
    flushSwitch();
  }

  // One switch in flight at a time; a newer one waits for it and replaces any older one waiting.
  function flushSwitch() {
    if (!pendingSwitch || inFlightId !== null || !connected) return;
    pendingSwitch.frame.id = nextRequest++;
    inFlightId = pendingSwitch.frame.id;
    socket.send(JSON.stringify(pendingSwitch.frame));
  }

  function retrySwitch() {
    if (!failure) return;
    const frame = failure.frame;
    startSwitch({ query: frame.query, params: frame.params, partnerId: frame.partnerId,
                  visitData: { uid: frame.uid } });
  }

  function answered(frame) {
    if (frame.id === null || frame.id === undefined || frame.id !== inFlightId) return null;
    inFlightId = null;
    const current = pendingSwitch && pendingSwitch.frame.id === frame.id;
    return current ? pendingSwitch : "stale";
  }

  function onPanel(frame) {
    if (frame.token) token = frame.token;
    const which = answered(frame);
    if (which === "stale") { flushSwitch(); return; } // an older switch's answer: the newer one is on its way
    if (which) {
      signed = { url: urlOf(which.frame.query), at: frame.signedAt || null };
      pendingSwitch = null;
      phase = "live";
      show(frame, true);
      render();
      return;
    }
    show(frame, false); // a refresh of what the server shows (an invalidation, a resync)
  }

  function onError(frame) {
    const which = answered(frame);
    if (which === "stale") { flushSwitch(); return; }
    if (which) {
      failure = { reason: frame.message || t(frame.code), frame: which.frame };
      pendingSwitch = null;
      phase = "failed";
      render();
      return;
    }
    showNotice(frame.message || t(frame.code));
  }

  // --- the session's end: reload our own signed URL while its sign is valid -----------------------
  function urlOf(query) {
    const pairs = Object.entries(query || {}).map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v === null ? "" : String(v)));
    return location.origin + location.pathname + "?" + pairs.join("&") + "&lang=" + encodeURIComponent(boot.lang || "zh");
  }

  function signStillValid(at) {
    if (typeof at !== "number") return false;
    const maxAgeMs = (boot.signMaxAge || 300) * 1000;
    return Date.now() + skewMs < at + maxAgeMs - 15000; // with a margin for the round trip
  }

  function reloadFrom(query) {
    closedByUs = true;
    if (socket) socket.close(1000);
    location.replace(urlOf(query));
  }

  function sessionOver() {
    if (phase === "ended") return;
    const waitingShell = !!main.querySelector("[data-testid=waiting]") && !boot.signedAt;
    let recently = false;
    try { recently = Date.now() - Number(sessionStorage.getItem("sobot-panel-reloaded") || 0) < 30000; } catch (e) { /* storage off */ }
    // A fresh page brings a fresh session; a reload that just happened and ended again would loop.
    if (!recently && (waitingShell || signStillValid(signed.at))) {
      try { sessionStorage.setItem("sobot-panel-reloaded", String(Date.now())); } catch (e) { /* storage off */ }
      closedByUs = true;
      if (socket) socket.close(1000);
      location.replace(signed.url);
      return;
    }
    phase = "ended";
    closedByUs = true;
    if (socket) socket.close(1000);
    render();
  }

  // --- the socket --------------------------------------------------------------------------

  // The token goes in the first frame (a hello), never in the URL where proxies and logs keep it.
  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/ws?lang=" + encodeURIComponent(boot.lang || "zh");
  }

  function send(frame) {
    if (socket && connected && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function connect() {
    if (!("WebSocket" in window) || closedByUs) return;
    const ws = new WebSocket(wsUrl());
    socket = ws;
    ws.addEventListener("open", () => ws.send(JSON.stringify({ type: "hello", token, view: boot.view })));
    ws.addEventListener("message", (event) => {
      if (ws !== socket) return;
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type === "ready") onReady();
      else if (frame.type === "panel") onPanel(frame);
      else if (frame.type === "error") onError(frame);
      else if (frame.type === "pong" && frame.token) token = frame.token;
    });
    ws.addEventListener("close", (event) => {
      if (ws !== socket) return;
      connected = false;
      inFlightId = null; // what was asked on this socket will not be answered: ask again on the next
      clearInterval(pingTimer);
      if (closedByUs) return;
      if (event.code === 4401) { sessionOver(); return; }
      attempts += 1;
      render();
      // exponential backoff with full jitter, capped at 15 s; a full session waits longer
      const floor = event.code === 4429 ? 5000 : 0;
      const delay = floor + Math.random() * Math.min(15000, 500 * 2 ** Math.min(attempts, 5));
      setTimeout(connect, delay);
    });
  }

  function onReady() {
    const reconnected = everConnected;
    connected = true;
    everConnected = true;
    attempts = 0;
    // Reconcile to the latest switch, if one is waiting; else make sure what is shown is current.
    if (pendingSwitch) flushSwitch();
    else if (reconnected) send({ type: "resync", view: boot.view });
    clearInterval(pingTimer);
    pingTimer = setInterval(() => send({ type: "ping" }), 25000);
    render();
  }

  window.addEventListener("message", (event) => {
    // Only Sobot's own origins may steer the panel (PANEL_HOST_ORIGINS).
    if (event.source !== window.parent || !originAllowed(event.origin)) return;
    const data = event.data;
    if (!data || typeof data !== "object" || data.name !== "selected") return;
    parentOrigin = event.origin;
    startSwitch(data);
  });
  window.addEventListener("pagehide", () => { closedByUs = true; if (socket) socket.close(1000); });

  main.dataset.partnerId = partnerId;
  // What the page came with, serialised as pushes will be: the first push changes only what differs.
  if (!main.querySelector("[data-testid=waiting]")) shownParts = serialisedParts(main.innerHTML);
  connect();
  window.sobotPanel = {
    get parentOrigin() { return parentOrigin; },
    get partnerId() { return partnerId; },
    get phase() { return phase; },
    get connected() { return connected; },
    get pushes() { return counters.pushes; },
    get changes() { return counters.changes; },
  };
})();
