// sobot-panel: the Sobot host simulator (demo mode only). Plain modern JS, no dependencies.
// It plays Sobot's part of the docking protocol:
// - SPEC §4 URL mode: the first customer loads the iFrame with a signed URL; every later switch posts
//   a freshly signed `selected` message and leaves `src` alone (Sobot never reloads the page).
// - SPEC §4 postMessage mode: the iFrame loads with no query; `selected` is posted on load and on switch.
// - SPEC §5: every message the panel posts back is shown as Sobot would render it, with its raw JSON.
"use strict";
(function () {
  const root = document.getElementById("devhost");
  if (!root) return;
  const boot = JSON.parse(root.dataset.boot || "{}");
  const messages = boot.messages || {};
  const frame = document.getElementById("panel-frame");
  const placeholder = document.getElementById("placeholder");
  const urlInput = document.getElementById("signed-url");
  const copyUrlButton = document.getElementById("copy-url");
  const lastSelected = document.getElementById("last-selected");
  const statusEl = document.getElementById("host-status");
  const feed = document.getElementById("messages");
  const feedEmpty = document.getElementById("messages-empty");
  const countEl = document.getElementById("message-count");
  const pickers = document.getElementById("pickers");
  const surfaceSelect = document.getElementById("pick-surface");
  const tenantSelect = document.getElementById("pick-tenant");
  const viewSelect = document.getElementById("pick-view");
  const zcBox = document.getElementById("pick-zc");
  const sizeEl = document.getElementById("frame-size");
  const langLink = document.getElementById("lang-switch");

  const state = {
    surface: boot.surface || "workbench",
    view: boot.view || "",
    mode: boot.mode === "postmessage" ? "postmessage" : "url",
    zcEncode: !!boot.zcEncode,
    partnerId: "",
    name: "",
    loadedKey: "", // what the iFrame currently shows: surface|view|mode|zc
    ready: false, // the iFrame fired `load` for loadedKey
    request: 0, // newest signing request; older answers are dropped
  };
  zcBox.checked = state.zcEncode;
  // The panel is served by this very service, so its origin is ours; never post to "*".
  const panelOrigin = location.origin;
  let received = 0;

  function t(code, params) {
    const text = messages[code] || code;
    return text.replace(/\{(\w+)\}/g, (m, k) => (params && k in params ? String(params[k]) : m));
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "className") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function say(text) {
    statusEl.textContent = text || "";
  }

  // --- choices and the address bar ------------------------------------------------------------
  function frameKey() {
    return [state.surface, state.view, state.mode, state.zcEncode ? "zc" : ""].join("|");
  }

  function rememberChoices() {
    const params = new URLSearchParams();
    params.set("mode", state.mode);
    params.set("surface", state.surface);
    if (state.view) params.set("view", state.view);
    if (state.zcEncode) params.set("zcEncode", "1");
    if (state.partnerId) params.set("customer", state.partnerId);
    if (boot.tenant) params.set("tenant", boot.tenant);
    params.set("lang", boot.lang);
    history.replaceState(null, "", "?" + params.toString());
    const other = new URLSearchParams(params);
    other.set("lang", boot.lang === "zh" ? "en" : "zh");
    langLink.href = "?" + other.toString();
  }

  function applySize() {
    frame.className = "frame frame-" + state.surface;
    const size = (boot.sizes || {})[state.surface] || [0, 0];
    sizeEl.textContent = t("devhost_frame_size", { width: size[0], height: size[1] });
    root.dataset.surface = state.surface;
  }

  // --- signing ---------------------------------------------------------------------------------
  async function fetchSigned(partnerId) {
    const params = new URLSearchParams({ surface: state.surface, partnerId, lang: boot.lang });
    if (boot.tenant) params.set("tenant", boot.tenant);
    if (state.view) params.set("view", state.view);
    if (state.zcEncode) params.set("zcEncode", "1");
    const response = await fetch("/dev/host/signed?" + params.toString(), {
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok || !body || !body.url) {
      throw new Error((body && body.message) || response.status + " " + response.statusText);
    }
    return body;
  }

  function showSigned(signed) {
    urlInput.value = new URL(signed.url, location.href).href;
    copyUrlButton.disabled = false;
  }

  function shellUrl() {
    const base = boot.tenant ? "/t/" + encodeURIComponent(boot.tenant) : "";
    const path = base + "/embed/" + state.surface + (state.view ? "/" + state.view : "");
    return path + "?lang=" + encodeURIComponent(boot.lang);
  }

  function loadFrame(src) {
    state.loadedKey = frameKey();
    state.ready = false;
    frame.hidden = false;
    placeholder.hidden = true;
    frame.src = src;
  }

  function postSelected(signed) {
    // SPEC §4: the message carries the same signed fields as the URL, so the panel verifies it again.
    frame.contentWindow.postMessage(signed.selected, panelOrigin);
    lastSelected.textContent = JSON.stringify(signed.selected, null, 2);
    say(t("devhost_posted_selected", { name: state.name }));
  }

  async function show(partnerId) {
    const ticket = ++state.request;
    let signed;
    try {
      signed = await fetchSigned(partnerId);
    } catch (error) {
      if (ticket === state.request) say(t("devhost_sign_failed", { message: error.message }));
      return;
    }
    if (ticket !== state.request) return; // a newer click won
    showSigned(signed);
    const sameFrame = state.loadedKey === frameKey();
    if (state.mode === "url") {
      if (!sameFrame || !state.ready) {
        loadFrame(signed.url);
        say(t("devhost_loading_frame", { name: state.name }));
      } else {
        postSelected(signed);
      }
    } else if (!sameFrame) {
      loadFrame(shellUrl()); // `selected` follows on load
      say(t("devhost_loading_frame", { name: state.name }));
    } else if (state.ready) {
      postSelected(signed);
    }
  }

  frame.addEventListener("load", () => {
    if (!state.loadedKey) return;
    state.ready = true;
    root.dataset.frameLoads = String(Number(root.dataset.frameLoads || "0") + 1);
    if (state.mode === "postmessage" && state.partnerId) {
      const ticket = ++state.request;
      fetchSigned(state.partnerId).then((signed) => {
        if (ticket !== state.request) return;
        showSigned(signed);
        postSelected(signed);
      }, (error) => say(t("devhost_sign_failed", { message: error.message })));
    } else {
      say("");
    }
  });

  function reloadFrame() {
    applySize();
    rememberChoices();
    state.loadedKey = "";
    state.ready = false;
    if (state.mode === "postmessage") {
      loadFrame(shellUrl());
    } else if (state.partnerId) {
      show(state.partnerId);
    } else {
      frame.hidden = true;
      placeholder.hidden = false;
      frame.removeAttribute("src");
    }
  }

  // --- customers -------------------------------------------------------------------------------
  function pick(button) {
    state.partnerId = button.dataset.partnerId;
    state.name = button.querySelector(".c-name").firstChild.textContent.trim();
    document.querySelectorAll("button.customer").forEach((b) => {
      b.setAttribute("aria-pressed", b === button ? "true" : "false");
    });
    rememberChoices();
    show(state.partnerId);
  }

  document.querySelector(".customers").addEventListener("click", (event) => {
    const button = event.target.closest("button.customer");
    if (button) pick(button);
  });

  pickers.addEventListener("change", (event) => {
    const target = event.target;
    if (target === surfaceSelect) state.surface = target.value;
    else if (target === viewSelect) state.view = target.value;
    else if (target === zcBox) state.zcEncode = target.checked;
    else if (target.name === "mode") state.mode = target.value === "postmessage" ? "postmessage" : "url";
    else return;
    reloadFrame();
  });
  pickers.addEventListener("submit", (event) => event.preventDefault());
  document.getElementById("reload").addEventListener("click", reloadFrame);

  // --- copying ---------------------------------------------------------------------------------
  async function copyText(text, button) {
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch (e) {
      const area = el("textarea", { className: "offscreen", "aria-hidden": "true", readonly: true });
      area.value = text;
      document.body.append(area);
      area.select();
      try { ok = document.execCommand("copy"); } catch (e2) { ok = false; }
      area.remove();
    }
    say(ok ? t("devhost_copied") : t("devhost_copy_failed"));
    if (ok && button) {
      button.classList.add("done");
      setTimeout(() => button.classList.remove("done"), 1200);
    }
  }
  copyUrlButton.addEventListener("click", () => copyText(urlInput.value, copyUrlButton));

  // --- what the panel posts back (SPEC §5) ------------------------------------------------------
  function isHttp(url) {
    return typeof url === "string" && /^https?:\/\//i.test(url);
  }

  function decoded(url) {
    try { return decodeURIComponent(url); } catch (e) { return url; }
  }

  function link(url) {
    // SPEC §5.2: outside mini programs a link is http(s); a mini-program page path is shown, not opened.
    if (!url) return null;
    const plain = decoded(String(url));
    if (isHttp(plain)) {
      return el("a", { href: plain, target: "_blank", rel: "noopener noreferrer", className: "card-link",
        text: t("devhost_open_link") });
    }
    return el("p", { className: "card-path", text: t("devhost_mini_program", { path: plain }) });
  }

  function thumb(src, size) {
    if (!src) return el("span", { className: "thumb thumb-" + size + " thumb-empty", "aria-hidden": "true" });
    return el("img", { className: "thumb thumb-" + size, src: decoded(String(src)), alt: "", loading: "lazy",
      referrerpolicy: "no-referrer" });
  }

  function yuan(fen) {
    const text = String(fen);
    if (!/^\d+$/.test(text)) return null;
    const value = BigInt(text);
    const whole = (value / 100n).toLocaleString("en-US");
    return "¥" + whole + "." + String(value % 100n).padStart(2, "0");
  }

  // Sobot's agents read China time (UTC+8), as the panel shows it, whatever this machine's zone is.
  const chinaTime = new Intl.DateTimeFormat("sv-SE", { timeZone: "Asia/Shanghai", year: "numeric",
    month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false });
  function when(ms) {
    const n = Number(ms);
    if (!ms || !Number.isFinite(n)) return "";
    return chinaTime.format(new Date(n));
  }

  function warnings(list) {
    if (!list.length) return null;
    return el("ul", { className: "warnings" }, ...list.map((code) => el("li", { text: t(code) })));
  }

  function statusText(status, custom) {
    const n = Number(status);
    if (n === 0) return custom || t("devhost_custom_status");
    return messages["order_status_" + n] || String(status);
  }

  function orderCard(order, data) {
    const warn = [];
    const fee = yuan(order.totalFee);
    if (fee === null || typeof order.totalFee !== "string") warn.push("devhost_warn_total_fee");
    const status = Number(order.orderStatus);
    if (!Number.isInteger(status) || status < 0 || status > 7 || (status === 0 && !order.statusCustom)) {
      warn.push("devhost_warn_status");
    }
    if (order.orderUrl && !isHttp(decoded(String(order.orderUrl))) && String(order.orderUrl).includes("://")) {
      warn.push("devhost_warn_link");
    }
    if (!data.cid || !data.uid) warn.push("devhost_warn_ids");
    const goods = Array.isArray(order.goods) ? order.goods : [];
    return el("div", { className: "sobot-card order-card", "data-testid": "order-card" },
      el("div", { className: "card-row" },
        el("span", { className: "card-code", text: t("devhost_order_code", { code: order.orderCode || "—" }) }),
        el("span", { className: "card-status status-" + status, "data-testid": "order-status",
          text: statusText(order.orderStatus, order.statusCustom) })),
      goods.length ? el("ul", { className: "card-goods" }, ...goods.slice(0, 4).map((g) =>
        el("li", {}, thumb(g && g.pictureUrl, "s"), el("span", { text: (g && g.name) || "" })))) : null,
      el("div", { className: "card-row card-total" },
        el("span", { className: "muted", text: t("devhost_order_time", { time: when(order.createTime) || "—" }) }),
        el("strong", { "data-testid": "order-total",
          text: t("devhost_order_total", { count: order.goodsCount ?? goods.length, total: fee ?? String(order.totalFee) }) })),
      link(order.orderUrl),
      warnings(warn));
  }

  function goodsCard(goods, data) {
    const warn = [];
    if (goods.url && !isHttp(decoded(String(goods.url))) && String(goods.url).includes("://")) {
      warn.push("devhost_warn_link");
    }
    if (!data.cid || !data.uid) warn.push("devhost_warn_ids");
    return el("div", { className: "sobot-card goods-card", "data-testid": "goods-card" },
      el("div", { className: "goods-row" },
        thumb(goods.thumbnail, "l"),
        el("div", { className: "goods-text" },
          el("p", { className: "card-title", text: goods.title || "" }),
          goods.description ? el("p", { className: "card-desc", text: goods.description }) : null,
          goods.label ? el("p", { className: "card-price", text: goods.label }) : null)),
      link(goods.url),
      warnings(warn));
  }

  function menus(list) {
    if (!Array.isArray(list) || !list.length) return null;
    return el("div", { className: "card-menus" }, ...list.slice(0, 3).map((menu) =>
      el("span", { className: "card-menu", title: menu.menuLink ? decoded(String(menu.menuLink)) : null,
        text: (menu && menu.menuName) || "" })));
  }

  function customCard(card, isOrder) {
    const amount = card.customCardAmount ? (card.customCardAmountSymbol || "") + card.customCardAmount : "";
    return el("li", { className: "custom-card" },
      thumb(card.customCardThumbnail, "m"),
      el("div", { className: "goods-text" },
        el("p", { className: "card-title", text: card.customCardName || "" }),
        card.customCardDesc ? el("p", { className: "card-desc", text: card.customCardDesc }) : null,
        isOrder && (card.customCardCode || card.customCardStatus) ? el("p", { className: "card-desc" },
          card.customCardCode ? t("devhost_order_code", { code: card.customCardCode }) + " " : "",
          card.customCardStatus ? el("span", { className: "card-status", text: card.customCardStatus }) : null) : null,
        el("p", { className: "card-row" },
          amount ? el("span", { className: "card-price", text: amount }) : el("span"),
          isOrder && card.customCardCount ? el("span", { className: "muted",
            text: t("devhost_count", { count: card.customCardCount }) }) : null),
        isOrder && card.customCardTime ? el("p", { className: "muted",
          text: t("devhost_order_time", { time: /^\d+$/.test(String(card.customCardTime)) ? when(card.customCardTime) : card.customCardTime }) }) : null,
        card.customCardLink ? link(card.customCardLink) : null,
        menus(card.customMenus)));
  }

  function generalCard(card, data) {
    const isOrder = Number(card.cardType) === 0;
    const warn = [];
    if (!data.cid || !data.uid) warn.push("devhost_warn_ids");
    const fields = card.customField && typeof card.customField === "object" ? Object.entries(card.customField) : [];
    const list = Array.isArray(card.customCards) ? card.customCards : [];
    return el("div", { className: "sobot-card general-card style-" + (Number(card.cardStyle) === 0 ? "tiled" : "list"),
      "data-testid": "general-card", "data-card-type": String(card.cardType ?? 1) },
      el("div", { className: "card-row" },
        el("span", { className: "card-kind", text: t("devhost_card_type_" + (isOrder ? 0 : 1)) }),
        card.cardGuide ? el("span", { className: "muted", text: card.cardGuide }) : null),
      card.cardImg ? thumb(card.cardImg, "wide") : null,
      card.cardDesc ? el("p", { className: "card-desc", text: card.cardDesc }) : null,
      fields.length ? el("dl", { className: "card-fields" }, ...fields.map(([k, v]) =>
        el("div", {}, el("dt", { text: k }), el("dd", { text: String(v) })))) : null,
      list.length ? el("ul", { className: "custom-cards" }, ...list.map((c) => customCard(c || {}, isOrder))) : null,
      menus(card.cardMenus),
      card.cardLink ? link(card.cardLink) : null,
      warnings(warn));
  }

  function ticketCard(params) {
    const rows = Object.entries(params && typeof params === "object" ? params : {});
    return el("div", { className: "sobot-card ticket-card", "data-testid": "ticket-card" },
      el("table", { className: "ticket-table" },
        el("caption", { text: t("devhost_ticket_params") }),
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: t("devhost_field_id") }),
          el("th", { scope: "col", text: t("devhost_field_value") }))),
        el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, el("code", { text: k })),
          el("td", { text: typeof v === "string" ? v : JSON.stringify(v) }))))));
  }

  function parseMiniPage(data) {
    if (typeof data.miniPage === "object" && data.miniPage) return data.miniPage;
    try { return JSON.parse(data.miniPage); } catch (e) { return null; }
  }

  function describe(data) {
    // Returns [kind label, msgType badge, preview element].
    if (data && data.type === "createOrder") {
      return [t("devhost_kind_ticket"), "createOrder", ticketCard(data.params)];
    }
    const type = data && Number(data.msgType);
    if (type === 24 || type === 25 || type === 28) {
      const page = parseMiniPage(data);
      if (!page) return [t("devhost_kind_unknown"), "msgType " + type, warnings(["devhost_warn_mini_page"])];
      if (type === 25) return [t("devhost_kind_order"), "msgType 25", orderCard(page, data)];
      if (type === 24) return [t("devhost_kind_goods"), "msgType 24", goodsCard(page, data)];
      return [t("devhost_kind_general"), "msgType 28", generalCard(page, data)];
    }
    return [t("devhost_kind_unknown"), "", null];
  }

  function addMessage(data) {
    const raw = JSON.stringify(data, null, 2);
    const [label, badge, preview] = describe(data);
    const copy = el("button", { type: "button", className: "btn small", text: t("devhost_copy_json") });
    copy.addEventListener("click", () => copyText(raw, copy));
    const stamp = new Date();
    const item = el("li", { className: "msg", "data-testid": "message",
      "data-msg-type": data && data.msgType !== undefined ? String(data.msgType) : (data && data.type) || "" },
      el("div", { className: "msg-head" },
        el("span", { className: "msg-kind", text: label }),
        badge ? el("code", { className: "msg-type", text: badge }) : null,
        el("time", { className: "muted", datetime: stamp.toISOString(), text: stamp.toLocaleTimeString() })),
      preview,
      el("details", { className: "raw" },
        el("summary", { text: t("devhost_raw_json") }),
        el("pre", { tabindex: "0", "data-testid": "raw-json", text: raw })),
      el("div", { className: "msg-actions" }, copy));
    feed.prepend(item); // newest first
    received += 1;
    countEl.textContent = String(received);
    feedEmpty.hidden = true;
  }

  window.addEventListener("message", (event) => {
    // Only the docked panel speaks to the host: its window, our origin.
    if (event.source !== frame.contentWindow || event.origin !== panelOrigin) return;
    addMessage(event.data);
  });

  document.getElementById("clear-messages").addEventListener("click", () => {
    feed.replaceChildren();
    received = 0;
    countEl.textContent = "0";
    feedEmpty.hidden = false;
  });

  // --- start -----------------------------------------------------------------------------------
  applySize();
  rememberChoices();
  if (state.mode === "postmessage") loadFrame(shellUrl());
  // Another company has other customers (and signs): the simulator starts over for it.
  if (tenantSelect) {
    tenantSelect.addEventListener("change", () => {
      const params = new URLSearchParams({ tenant: tenantSelect.value, lang: boot.lang });
      location.assign("?" + params.toString());
    });
  }

  const initial = boot.customer && document.querySelector('button.customer[data-partner-id="' +
    CSS.escape(boot.customer) + '"]');
  if (initial) pick(initial);
})();
