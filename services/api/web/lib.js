// Shared helpers of Zoe's pages: the API, DOM building, units, the live event stream.
"use strict";

export const FINAL = ["finished", "failed", "terminated", "error"];

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.errors = (body && body.errors) || [];
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return "";
}

// A JSON call to /api/v1; unsafe methods carry the CSRF token of the session cookie.
export async function api(path, {method = "GET", body, raw = false} = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!["GET", "HEAD"].includes(method)) headers["X-CSRF-Token"] = cookie("zoe_csrf");
  const r = await fetch("/api/v1" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401 && !path.startsWith("/login")) {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError(401, {error: "signed out"});
  }
  if (raw) return r;
  const type = r.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError(r.status, typeof data === "object" ? data : {error: data});
  return data;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// Set a node's text only when it changed (a selection inside it survives an update).
export function setText(node, text) {
  text = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== text) node.textContent = text;
}

export function flash(message) {
  const p = document.getElementById("flash");
  p.textContent = message ? String(message) : "";
  p.hidden = !message;
}

export const GiB = 2 ** 30;
export function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n >= GiB) return (n / GiB).toFixed(n % GiB ? 2 : 0) + " GiB";
  if (n >= 2 ** 20) return (n / 2 ** 20).toFixed(0) + " MiB";
  return (n / 1024).toFixed(0) + " KiB";
}
export const cores = (c) => (c === null || c === undefined ? "" : `${+c.toFixed(2)} cores`);

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, {dateStyle: "short", timeStyle: "medium"});
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}
export const between = (a, b) => (a ? ((b ? new Date(b) : new Date()) - new Date(a)) / 1000 : null);

export const stateBadge = (state) => el("span", {class: "state state-" + state, "data-state": state}, state);

export function setState(node, state) {
  if (node.dataset.state === state) return;
  node.dataset.state = state;
  node.className = "state state-" + state;
  node.textContent = state;
}

// A modal confirmation (a <dialog>): resolves true on confirm, false on cancel or Escape.
export function confirmDialog(question, action = "Confirm") {
  return new Promise((resolve) => {
    const dialog = el("dialog", {"aria-labelledby": "confirm-q", class: "confirm"},
      el("p", {id: "confirm-q"}, question),
      el("form", {method: "dialog"},
        el("button", {value: "cancel", class: "secondary"}, "Cancel"),
        el("button", {value: "confirm", class: "danger"}, action)));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue === "confirm"); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// The live stream of execution state changes (GET /api/v1/events), shared by a page.
// `onEvent({execution_id, state, at})` for each change; `onOpen()` at every (re)connect,
// so the page re-reads what it shows (events are not replayed). A stream the server
// closed or refused is opened again after a growing pause.
export function follow(onEvent, onOpen, query = "") {
  const badge = document.getElementById("live");
  let pause = 500, source = null, stopped = false;
  const show = (live) => {
    badge.classList.toggle("down", !live);
    badge.textContent = live ? "live" : "reconnecting…";
  };
  const open = () => {
    if (stopped) return;
    source = new EventSource("/api/v1/events" + query);
    source.addEventListener("open", () => { pause = 500; show(true); onOpen(); });
    source.addEventListener("state", (e) => onEvent(JSON.parse(e.data)));
    source.addEventListener("error", () => {
      show(false);
      if (source.readyState === EventSource.CLOSED) {  // refused or ended: the browser gives up
        setTimeout(open, pause);
        pause = Math.min(pause * 2, 10000);
      }
    });
  };
  open();
  window.addEventListener("pagehide", () => { stopped = true; source && source.close(); });
  return {close: () => { stopped = true; source && source.close(); }};
}

// Errors of a form next to their fields: each `[data-path]` element gets the messages
// whose path starts with it; the rest go to the form's summary.
export function showFieldErrors(form, error) {
  for (const n of form.querySelectorAll(".field-error")) { n.textContent = ""; n.hidden = true; }
  for (const n of form.querySelectorAll("[aria-invalid]")) n.removeAttribute("aria-invalid");
  const summary = form.querySelector(".form-errors");
  summary.replaceChildren();
  summary.hidden = true;
  if (!error) return;
  const slots = [...form.querySelectorAll(".field-error[data-path]")]
    .sort((a, b) => b.dataset.path.length - a.dataset.path.length);
  const rest = [];
  for (const e of error.errors || []) {
    const slot = slots.find((s) => e.path === s.dataset.path || e.path.startsWith(s.dataset.path + "."));
    if (!slot) { rest.push(e); continue; }
    slot.textContent = (slot.textContent ? slot.textContent + "; " : "") + e.message;
    slot.hidden = false;
    const input = document.getElementById(slot.dataset.for);
    if (input) input.setAttribute("aria-invalid", "true");
  }
  summary.append(el("strong", {}, error.message),
    ...rest.map((e) => el("div", {}, e.path ? `${e.path}: ${e.message}` : e.message)));
  summary.hidden = false;
  const first = form.querySelector("[aria-invalid]") || summary;
  first.focus();
}
