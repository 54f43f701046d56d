// sobot-panel: showing pushed panels without wiping what the agent is doing.
// A fragment is a list of top-level parts keyed by `data-part` (the header, the tabs, each view). A push
// replaces only the parts whose HTML changed and puts the focus back; a part holding a ticket form the
// agent is using (focused or edited) keeps its values and caret, and takes the newer version once the
// ticket is filed or the form is left. Parts are compared as the browser serialises them, on both sides.

export function setResult(el, text, ok) {
  if (!el) return;
  el.textContent = text;
  el.classList.toggle("ok", !!ok);
  el.classList.toggle("bad", !ok);
}

// A filed ticket locks its form until the agent types again, so a second click files nothing.
export function lockForm(form, text) {
  form.dataset.filed = "1";
  const button = form.querySelector('button[type="submit"]');
  if (button) { button.disabled = true; button.setAttribute("aria-disabled", "true"); }
  setResult(form.querySelector(".send-result"), text, true);
}

export function unlockForm(form) {
  if (!form.dataset.filed) return;
  delete form.dataset.filed;
  const button = form.querySelector('button[type="submit"]');
  if (button) { button.disabled = false; button.removeAttribute("aria-disabled"); }
  setResult(form.querySelector(".send-result"), "", true);
}

function partsOf(root) {
  const parts = new Map();
  for (const el of root.children) if (el.dataset && el.dataset.part) parts.set(el.dataset.part, el);
  return parts;
}

function serialisedParts(html) {
  const holder = document.createElement("template");
  holder.innerHTML = html;
  return new Map([...partsOf(holder.content)].map(([k, el]) => [k, el.outerHTML]));
}

// The agent is using a ticket form when it has the focus or differs from what it was rendered with.
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

export class Patcher {
  constructor(main) {
    this.main = main;
    this.shownHtml = null; // the fragment last applied, as received
    this.deferred = new Map(); // data-part -> a newer version held back while the agent uses the old one
    // What the page came with, serialised as pushes will be: the first push changes only what differs.
    const waiting = main.querySelector("[data-testid=waiting]");
    this.shownParts = waiting ? new Map() : serialisedParts(main.innerHTML);
  }

  // Show a pushed fragment; `whole` (a switch, another customer) replaces everything. True if the page changed.
  show(html, whole) {
    const waiting = this.main.querySelector("[data-testid=waiting]");
    if (html === this.shownHtml && !waiting) return false; // identical to what is shown: nothing changes
    const changed = whole || waiting ? this.replaceAll(html) : this.patch(html);
    this.shownHtml = html;
    this.shownParts = serialisedParts(html);
    return changed > 0;
  }

  replaceAll(html) {
    this.main.innerHTML = html;
    this.deferred.clear();
    return 1;
  }

  // Replace only the parts whose HTML changed; returns how many did.
  patch(html) {
    const main = this.main;
    const incoming = document.createElement("template");
    incoming.innerHTML = html;
    const fresh = partsOf(incoming.content);
    const current = partsOf(main);
    const sameShape = fresh.size > 0 && fresh.size === current.size && [...fresh.keys()].every((k) => current.has(k));
    if (!sameShape) return this.replaceAll(html);
    const focused = this.focusKey(document.activeElement);
    let changed = 0;
    for (const [key, node] of fresh) {
      if (this.shownParts.get(key) === node.outerHTML) { this.deferred.delete(key); continue; }
      const old = current.get(key);
      if (inUse(old)) { this.deferred.set(key, node); continue; }
      this.deferred.delete(key);
      old.replaceWith(node);
      changed += 1;
    }
    if (focused && !main.contains(document.activeElement)) {
      const again = main.querySelector(focused);
      if (again) again.focus();
    }
    return changed;
  }

  // A held-back part goes in once nobody uses it any more; after a filed ticket (`filedText`) at once,
  // its form locked with that message.
  applyDeferred(filedText) {
    for (const [key, node] of this.deferred) {
      const old = partsOf(this.main).get(key);
      if (!old) { this.deferred.delete(key); continue; }
      if (filedText === undefined && inUse(old)) continue;
      this.deferred.delete(key);
      node.hidden = old.hidden;
      old.replaceWith(node);
      const form = node.querySelector("form[data-send-form]");
      if (form && filedText !== undefined) lockForm(form, filedText);
    }
  }

  focusKey(el) {
    if (!el || el === document.body || !this.main.contains(el)) return null;
    if (el.id) return "#" + CSS.escape(el.id);
    if (el.dataset && el.dataset.key) return '[data-key="' + CSS.escape(el.dataset.key) + '"]';
    return null;
  }
}
