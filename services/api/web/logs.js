// /executions/{id}/logs/{instance}: the log, followed live while the instance runs, the
// copy Zoe kept after; a download link either way.
"use strict";
import {api, ApiError, el, FINAL, flash, follow, setText} from "/ui/lib.js";

export async function logsPage(content, data) {
  const instance = data.instance;
  const path = `/executions/${data.id}/services/${encodeURIComponent(instance)}/logs`;
  const status = el("p", {class: "muted", role: "status", id: "log-status"}, "Loading…");
  const pre = el("pre", {class: "log", id: "log", tabindex: "0", "aria-label": `Log of ${instance}`, "aria-live": "off"});
  content.replaceChildren(
    el("p", {class: "crumbs"}, el("a", {href: "/executions"}, "Executions"), " / ",
      el("a", {href: "/executions/" + data.id}, "#" + data.id), " / ", instance),
    el("h1", {}, `Log of ${instance}`),
    el("div", {class: "actions"}, status,
      el("a", {class: "button secondary", href: "/api/v1" + path, download: `zoe-${data.id}-${instance}.log`}, "Download")),
    pre);

  const atBottom = () => window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
  const append = (text) => {
    if (!text) return;
    const stick = atBottom();
    pre.append(document.createTextNode(text));  // appended: a selection above survives
    if (stick) window.scrollTo(0, document.body.scrollHeight);
  };
  const instanceState = async () => {
    const e = await api("/executions/" + data.id);
    const s = e.services.find((x) => x.name === instance);
    if (!s) throw new ApiError(404, {error: `execution ${data.id} has no service instance ${instance}`});
    return {e, s};
  };
  // The whole log read once; what the page shows is kept when there is none to read (the
  // container is gone and Zoe's copy not written yet) or it is empty.
  const snapshot = async () => {
    let text;
    try {
      text = await api(path);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
      return;
    }
    text = typeof text === "string" ? text : JSON.stringify(text);
    if (text) pre.textContent = text;
  };

  let following = false;
  // Follow while the instance runs; the first follow gives the whole log, a later one
  // (after a dropped stream) re-reads the log and follows from its end.
  const run = async (first) => {
    if (following) return;
    const {e, s} = await instanceState();
    const live = ["placed", "starting", "running", "stopping"].includes(s.state) && !FINAL.includes(e.state);
    if (!live) {
      await snapshot();
      setText(status, pre.textContent ? `${instance} ${s.state}: the log is complete (the copy Zoe kept).` : `No log for ${instance} (${s.state}).`);
      return;
    }
    following = true;
    setText(status, `Following live: ${instance} is ${s.state}.`);
    try {
      if (!first) await snapshot();
      const r = await api(path + (first ? "?follow=1" : "?follow=1&tail=0"), {raw: true});
      if (!r.ok) {
        if (r.status === 404) { setText(status, `No log for ${instance} yet (${s.state}).`); return; }
        throw new ApiError(r.status, await r.json().catch(() => ({})));
      }
      if (first) pre.textContent = "";
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        append(value);
      }
    } catch (err) {
      flash(err.message);
    } finally {
      following = false;
    }
    // the follow ended: the container stopped, or the stream dropped (then follow again)
    const {s: after} = await instanceState();
    if (after.state === "running") setTimeout(() => run(false), 1000);
    else {
      // the whole log once more: a follow that ended as the container did may miss its
      // last lines
      await snapshot().catch((err) => flash(err.message));
      setText(status, `${instance} ${after.state}${after.exit_code !== null ? ` (exit code ${after.exit_code})` : ""}: the log is complete.`);
    }
  };
  await run(true);
  // a later start of the instance (placed, started again) is followed too
  follow((ev) => { if (ev.execution_id === data.id && !following) run(false).catch((err) => flash(err.message)); },
    () => {}, "?execution=" + data.id);
}
