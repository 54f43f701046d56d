// sobot-panel: the panel script. Plain modern JS modules, no dependencies.
// - tabs, card and ticket sends (audit first, then postMessage to the verified parent origin only)
// - SPEC §4: listens for Sobot's `selected` message, relays it over /ws, shows the pushed panel
// - what the panel is doing is always visible: switching, a refused switch, a lost connection, an ended
//   session each dim the content, make it inert and say so in the banner at the top
// - pushes patch what changed (panel-patch.js): typing, the focus and the open tab survive them
import { Patcher, unlockForm } from "./panel-patch.js";
import { createSender } from "./panel-send.js";
import { initialParentOrigin, originMatcher, signStillValid, signedUrl } from "./panel-origin.js";

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

  const originAllowed = originMatcher(boot.origins, boot.allowSelf);
  parentOrigin = initialParentOrigin(originAllowed);

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
  main.addEventListener("focusout", () => setTimeout(() => patcher.applyDeferred(), 0));

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

  // --- sending (panel-send.js): audit first, then postMessage to the verified parent ---------------
  const sender = createSender({
    t,
    lang: boot.lang,
    base: boot.base || "",
    token: () => token,
    parentOrigin: () => parentOrigin,
    epoch: () => switchEpoch,
    sessionOver: () => sessionOver(),
    filed: (text) => patcher.applyDeferred(text),
  });
  const sendCard = sender.sendCard;
  const sendTicket = sender.sendTicket;

  // --- showing pushes ----------------------------------------------------------------------
  const patcher = new Patcher(main);

  function show(frame, isSwitch) {
    counters.pushes += 1;
    const another = typeof frame.partnerId === "string" && frame.partnerId !== partnerId;
    if (typeof frame.partnerId === "string") partnerId = frame.partnerId;
    main.dataset.partnerId = partnerId;
    if (!patcher.show(frame.html, isSwitch || another)) return;
    if (currentView) selectTab(currentView);
    counters.changes += 1;
    document.dispatchEvent(new CustomEvent("panel:updated", { detail: { partnerId } }));
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
      signed = { url: signedUrl(which.frame.query, boot.lang), at: frame.signedAt || null };
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
  function reloadFrom(query) {
    closedByUs = true;
    if (socket) socket.close(1000);
    location.replace(signedUrl(query, boot.lang));
  }

  function sessionOver() {
    if (phase === "ended") return;
    const waitingShell = !!main.querySelector("[data-testid=waiting]") && !boot.signedAt;
    let recently = false;
    try { recently = Date.now() - Number(sessionStorage.getItem("sobot-panel-reloaded") || 0) < 30000; } catch (e) { /* storage off */ }
    // A fresh page brings a fresh session; a reload that just happened and ended again would loop.
    if (!recently && (waitingShell || signStillValid(signed.at, boot.signMaxAge, skewMs))) {
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
    return scheme + "//" + location.host + (boot.base || "") + "/ws?lang=" + encodeURIComponent(boot.lang || "zh");
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
