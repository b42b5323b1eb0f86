// /executions: mine (everyone's for admins), filtered by state, name and user, in pages;
// rows follow the event stream and are updated in place.
"use strict";
import {api, between, duration, el, follow, setState, setText, stateBadge, when} from "/ui/lib.js";

const PAGE_SIZE = 25;
const STATES = ["submitted", "queued", "starting", "running", "cleaning_up", "finished", "failed", "terminated", "error"];

function filters() {
  const q = new URLSearchParams(location.search);
  return {state: q.get("state") || "", name: q.get("name") || "", user: q.get("user") || "",
    page: Math.max(1, parseInt(q.get("page") || "1", 10) || 1)};
}

function filterForm(f, me) {
  const opt = (v, label) => el("option", {value: v, selected: f.state === v}, label);
  return el("form", {class: "filters", method: "get", action: "/executions", role: "search"},
    el("div", {class: "field"}, el("label", {for: "f-state"}, "State"),
      el("select", {id: "f-state", name: "state"}, opt("", "any"), ...STATES.map((s) => opt(s, s)))),
    el("div", {class: "field"}, el("label", {for: "f-name"}, "Name contains"),
      el("input", {id: "f-name", name: "name", value: f.name})),
    me.can("operate-all") ? el("div", {class: "field"}, el("label", {for: "f-user"}, "User"),
      el("input", {id: "f-user", name: "user", value: f.user})) : null,
    el("div", {class: "field"}, el("button", {type: "submit"}, "Filter")));
}

const matches = (e, f) => (!f.state || e.state === f.state) && (!f.user || e.user === f.user) &&
  (!f.name || e.name.toLowerCase().includes(f.name.toLowerCase()));

function row(e) {
  const tr = el("tr", {"data-id": e.id},
    el("td", {}, el("a", {href: "/executions/" + e.id}, "#" + e.id)),
    el("td", {class: "name"}, e.name), el("td", {class: "user"}, e.user),
    el("td", {class: "st"}, stateBadge(e.state)),
    el("td", {class: "submitted"}, when(e.submitted_at)), el("td", {class: "ran"}, ""));
  update(tr, e);
  return tr;
}

function update(tr, e) {
  setState(tr.querySelector(".state"), e.state);
  setText(tr.querySelector(".name"), e.name);
  setText(tr.querySelector(".ran"), e.started_at ? duration(between(e.started_at, e.finished_at)) : "");
}

export async function executionsPage(content, data, me) {
  const f = filters();
  const tbody = el("tbody");
  const count = el("p", {class: "muted", role: "status"});
  const pager = el("nav", {class: "pager", "aria-label": "Pages"});
  const all = me.can("operate-all");
  content.replaceChildren(el("h1", {}, all ? "All executions" : "My executions"),
    filterForm(f, me), count,
    el("div", {class: "scroll"}, el("table", {class: "executions"},
      el("caption", {class: "sr-only"}, "Executions, newest first"),
      el("thead", {}, el("tr", {}, ...["Id", "Name", "User", "State", "Submitted", "Ran for"].map((h) => el("th", {scope: "col"}, h)))),
      tbody)), pager);

  const query = new URLSearchParams({limit: "10000"});
  if (f.state) query.set("state", f.state);
  if (all) query.set("all", "1");
  if (f.user) query.set("user", f.user);

  // Re-read the list and reconcile the rows: existing ones updated in place.
  const load = async () => {
    const rows = (await api("/executions?" + query)).filter((e) => matches(e, f));
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    const shown = rows.slice((f.page - 1) * PAGE_SIZE, f.page * PAGE_SIZE);
    const old = new Map([...tbody.children].map((tr) => [tr.dataset.id, tr]));
    shown.forEach((e, i) => {
      let tr = old.get(String(e.id));
      if (tr) { update(tr, e); old.delete(String(e.id)); } else tr = row(e);
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    for (const tr of old.values()) tr.remove();
    setText(count, rows.length ? `${rows.length} execution${rows.length > 1 ? "s" : ""}` : "No executions match.");
    const link = (p, label) => {
      const q = new URLSearchParams(location.search);
      q.set("page", p);
      return el("a", {href: "?" + q, "aria-current": p === f.page ? "page" : null}, label);
    };
    pager.replaceChildren(...(pages > 1 ? [f.page > 1 ? link(f.page - 1, "‹ Newer") : null,
      el("span", {}, ` page ${f.page} of ${pages} `), f.page < pages ? link(f.page + 1, "Older ›") : null] : []));
  };
  await load();
  follow(async (ev) => {
    const tr = tbody.querySelector(`tr[data-id="${ev.execution_id}"]`);
    if (tr) {
      try { update(tr, await api("/executions/" + ev.execution_id)); } catch { /* gone, or not ours */ }
    } else if (f.page === 1 && ["submitted", "queued"].includes(ev.state)) {
      try {
        const e = await api("/executions/" + ev.execution_id);
        if (matches(e, f) && !tbody.querySelector(`tr[data-id="${e.id}"]`)) tbody.prepend(row(e));
      } catch { /* not ours */ }
    }
  }, load);
}
