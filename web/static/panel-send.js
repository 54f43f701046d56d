// sobot-panel: sending cards and tickets. The server records the send first (POST /panel/send validates
// it by SPEC §5 and appends the audit record); only then is the message posted to Sobot, and only to the
// parent origin verified against PANEL_HOST_ORIGINS, never to "*".
import { lockForm, setResult } from "./panel-patch.js";

// ctx: { t, lang, token(), parentOrigin(), epoch() (bumped by every switch), sessionOver(), filed(text) }
export function createSender(ctx) {
  function newEventId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function submit(kind, data, holder) {
    if (!ctx.parentOrigin()) return { ok: false, message: ctx.t("parent_not_allowed") };
    const epoch = ctx.epoch();
    // A retried click reuses the same id, so the audit stream never holds it twice.
    holder.dataset.eventId = holder.dataset.eventId || newEventId();
    let response;
    try {
      response = await fetch((ctx.base || "") + "/panel/send?lang=" + encodeURIComponent(ctx.lang), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token: ctx.token(), kind, id: holder.dataset.eventId, data }),
      });
    } catch (e) {
      return { ok: false, message: ctx.t("network_error") };
    }
    let body = {};
    try { body = await response.json(); } catch (e) { body = { ok: false, message: ctx.t("internal_error") }; }
    if (response.status === 401) { ctx.sessionOver(); return { ok: false, message: ctx.t("session_ended") }; }
    if (!response.ok || !body.ok) return body.ok === false ? body : { ok: false, message: ctx.t("internal_error") };
    // Sobot moved to another conversation while this was being recorded: never hand it over now.
    if (epoch !== ctx.epoch()) return { ok: false, message: ctx.t("switched_not_sent") };
    window.parent.postMessage(body.message, ctx.parentOrigin());
    delete holder.dataset.eventId;
    return body;
  }

  async function sendCard(button) {
    const result = button.parentElement.querySelector(".send-result");
    button.disabled = true;
    setResult(result, ctx.t("sending"), true);
    try {
      const body = await submit(button.dataset.send, JSON.parse(button.dataset.card), button);
      if (body.ok) setResult(result, ctx.t(body.spooled ? "audit_spooled" : body.duplicate ? "sent_again" : "sent"), true);
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
    setResult(result, ctx.t("sending"), true);
    let filed = false;
    try {
      const body = await submit("ticket", data, form);
      if (body.ok) {
        // Filed: the form is cleared and locked, so a second click files nothing.
        filed = true;
        form.reset();
        const done = ctx.t(body.spooled ? "audit_spooled" : "ticket_sent") + " " + ctx.t("ticket_filed_locked");
        lockForm(form, done);
        ctx.filed(done);
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

  return { sendCard, sendTicket };
}
