// The cluster's pages: /nodes (capacity and reservations), /queue (what waits and why)
// and /users (roles and quotas). Each re-reads its table on a state change, in place.
"use strict";
import {api, ApiError, bytes, confirmDialog, cores, el, flash, follow, setText, stateBadge, when} from "/ui/lib.js";
import {whyWaiting} from "/ui/execution.js";

// Re-read at most once a second however many events come.
function throttled(fn) {
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn().catch((err) => flash(err.message)); }, 1000); };
}

function bar(label, used, total, text) {
  const pct = total ? Math.min(100, (used / total) * 100) : 0;
  return el("div", {class: "bar-box"},
    el("div", {class: "bar", role: "meter", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": used, "aria-valuetext": text},
      el("span", {style: null, "data-pct": pct.toFixed(0)})), el("small", {}, text));
}

function paintBars(root) {  // widths set from script: the page's CSP allows no inline style
  for (const s of root.querySelectorAll(".bar span[data-pct]")) s.style.width = s.dataset.pct + "%";
}

function keyed(tbody, rows, key, build) {
  const old = new Map([...tbody.children].map((tr) => [tr.dataset.key, tr]));
  rows.forEach((r, i) => {
    const sig = JSON.stringify(r);
    const tr = old.get(key(r));
    let node = tr;
    if (!tr || tr.dataset.sig !== sig) {  // an unchanged row is kept (and a selection in it)
      node = build(r);
      Object.assign(node.dataset, {key: key(r), sig});
      if (tr) tr.replaceWith(node);
    }
    old.delete(key(r));
    if (tbody.children[i] !== node) tbody.insertBefore(node, tbody.children[i] || null);
  });
  for (const tr of old.values()) tr.remove();
  paintBars(tbody);
}

const table = (caption, headings, tbody) => el("div", {class: "scroll"}, el("table", {},
  el("caption", {class: "sr-only"}, caption),
  el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", {scope: "col"}, h)))), tbody));

// Drain (after a confirmation) or undrain a node: for roles that change the config.
function drainButton(n, me, reload) {
  if (!me.can("change-config") || n.state === "lost") return null;
  const drained = n.state === "drained";
  return el("button", {type: "button", class: drained ? "secondary" : "danger", onclick: async () => {
    if (!drained && !(await confirmDialog(`Drain node ${n.name}? It takes no new instances; its elastic ones move elsewhere.`, "Drain"))) return;
    try {
      await api(`/nodes/${encodeURIComponent(n.name)}/${drained ? "undrain" : "drain"}`, {method: "POST", body: {}});
      flash("");
      setTimeout(reload, 1000);  // the scheduler records it
    } catch (err) { flash(err.message); }
  }}, drained ? "Undrain" : "Drain");
}

export async function nodesPage(content, data, me) {
  const tbody = el("tbody");
  content.replaceChildren(el("h1", {}, "Nodes"),
    table("Nodes of the cluster", ["Node", "State", "Cores reserved", "Memory reserved", "Instances", "Labels", "Last heartbeat", ""], tbody));
  const load = async () => keyed(tbody, await api("/nodes"), (n) => n.name, (n) => el("tr", {},
    el("th", {scope: "row"}, n.name),
    el("td", {}, stateBadge(n.state), n.drain_deadline ? el("small", {}, ` until ${when(n.drain_deadline)}`) : null),
    el("td", {}, bar(`Cores reserved on ${n.name}`, n.cores_reserved, n.cores, `${+n.cores_reserved.toFixed(2)} of ${cores(n.cores)}`)),
    el("td", {}, bar(`Memory reserved on ${n.name}`, n.memory_reserved, n.memory, `${bytes(n.memory_reserved)} of ${bytes(n.memory)}`)),
    el("td", {}, n.instances), el("td", {}, (n.labels || []).join(", ") || "—"), el("td", {}, when(n.last_heartbeat)),
    el("td", {}, drainButton(n, me, load))));
  await load();
  follow(throttled(load), load);
}

export async function queuePage(content, data, me) {
  const tbody = el("tbody");
  const count = el("p", {class: "muted", role: "status"});
  content.replaceChildren(el("h1", {}, "Queue"), count,
    table("Executions waiting", ["Execution", "User", "State", "Priority", "Submitted", "Why it waits"], tbody));
  const load = async () => {
    const q = me.can("operate-all") ? "&all=1" : "";
    const waiting = [...await api("/executions?state=queued&limit=200" + q), ...await api("/executions?state=submitted&limit=200" + q)];
    waiting.sort((a, b) => b.priority - a.priority || new Date(a.submitted_at) - new Date(b.submitted_at));
    const detailed = await Promise.all(waiting.slice(0, 50).map(async (e) => {
      try { const x = await api("/executions/" + e.id); return {...x, why: await whyWaiting(x, me)}; } catch { return {...e, why: ""}; }
    }));
    setText(count, detailed.length ? `${waiting.length} waiting` : "Nothing waits.");
    keyed(tbody, detailed, (e) => String(e.id), (e) => el("tr", {},
      el("td", {}, el("a", {href: "/executions/" + e.id}, `#${e.id} ${e.name}`)), el("td", {}, e.user),
      el("td", {}, stateBadge(e.state)), el("td", {}, e.priority), el("td", {}, when(e.submitted_at)), el("td", {}, e.why)));
  };
  await load();
  follow(throttled(load), load);
}

const quotaText = (v, unit) => (v === null || v === undefined ? "no limit" : unit(v));

export async function usersPage(content) {
  let users;
  try {
    users = await api("/users");
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      content.replaceChildren(el("h1", {}, "Users"), el("p", {}, "This platform has no user accounts."));
      return;
    }
    throw err;
  }
  const tbody = el("tbody");
  content.replaceChildren(el("h1", {}, "Users"),
    table("Users and their quotas", ["User", "Role", "Enabled", "Executions", "Cores", "Memory", "Runtime"], tbody));
  keyed(tbody, users, (u) => u.name, (u) => {
    const q = u.quota || {};
    return el("tr", {}, el("th", {scope: "row"}, u.name), el("td", {}, u.role), el("td", {}, u.enabled === false ? "no" : "yes"),
      el("td", {}, quotaText(q.executions, String)), el("td", {}, quotaText(q.cores, cores)),
      el("td", {}, quotaText(q.memory, bytes)), el("td", {}, quotaText(q.runtime, (s) => `${s} s`)));
  });
}
