// /executions/{id}: one execution, its instances and timeline, updated in place from
// the event stream (and, while it runs, its usage every few seconds for the charts).
"use strict";
import {api, ApiError, between, bytes, confirmDialog, cores, duration, el, FINAL, flash, follow,
  setState, setText, stateBadge, when} from "/ui/lib.js";
import {chart} from "/ui/chart.js";

const USAGE_EVERY = 5000;  // the monitor stores a sample every few seconds
const HISTORY = 60;  // samples kept per instance for its chart

function facts(e) {
  const items = [
    ["User", e.user], ["Submitted", when(e.submitted_at)], ["Started", when(e.started_at)],
    ["Ended", when(e.finished_at)],
    ["Waited", e.submitted_at ? duration(between(e.submitted_at, e.started_at || e.finished_at)) : ""],
    ["Ran for", e.started_at ? duration(between(e.started_at, e.finished_at)) : ""],
    ["Priority", e.priority], ["Size", e.size],
  ];
  return items.filter(([, v]) => v !== "" && v !== null && v !== undefined);
}

// Why a waiting execution waits, from the nodes' free room and what it asks for.
export async function whyWaiting(e, me) {
  if (!["submitted", "queued"].includes(e.state)) return "";
  if (e.state === "submitted") return "Submitted: the scheduler has not seen it yet.";
  // the scheduler's own word, when it has looked at it
  if (e.pending_reason) {
    const reason = e.pending_reason.replace(/[^.!]$/, "$&.");
    return `Queued: ${reason}` + (e.schedulable === false ? " No node of the cluster as it is could ever hold it." : "");
  }
  const pending = e.services.filter((s) => s.essential && ["created"].includes(s.state));
  if (!me.can("see-status")) return "Queued: waiting for room on the cluster for its essential instances.";
  let nodes;
  try { nodes = await api("/nodes"); } catch { return "Queued: waiting for room on the cluster."; }
  const up = nodes.filter((n) => n.state === "up");
  if (!up.length) return "Queued: no node of the cluster is up.";
  const need = pending.reduce((a, s) => ({cores: a.cores + s.cores, memory: a.memory + s.memory}), {cores: 0, memory: 0});
  const biggest = pending.reduce((a, s) => (s.cores > a.cores || s.memory > a.memory ? s : a), {cores: 0, memory: 0});
  const free = up.map((n) => ({name: n.name, cores: n.cores - n.cores_reserved, memory: n.memory - n.memory_reserved}));
  const fits = free.some((n) => n.cores >= biggest.cores && n.memory >= biggest.memory);
  const freeCores = free.reduce((a, n) => a + n.cores, 0), freeMem = free.reduce((a, n) => a + n.memory, 0);
  const asks = `its ${pending.length} essential instance${pending.length === 1 ? "" : "s"} need ${cores(need.cores)} and ${bytes(need.memory)}`;
  if (!fits || freeCores < need.cores || freeMem < need.memory) {
    return `Queued: waiting for room — ${asks}; the nodes up have ${cores(freeCores)} and ${bytes(freeMem)} free` +
      (fits ? "." : ` and none has room for an instance of ${cores(biggest.cores)} and ${bytes(biggest.memory)}.`);
  }
  return `Queued: ${asks}, which the cluster has free; it waits for its turn behind executions ranked before it.`;
}

function instanceRow(execution, s) {
  const tr = el("tr", {"data-instance": s.name},
    el("th", {scope: "row"}, s.name),
    el("td", {}, s.essential ? "essential" : "elastic"),
    el("td", {class: "st"}, stateBadge(s.state)),
    el("td", {class: "node"}), el("td", {class: "restarts"}), el("td", {class: "exit"}),
    el("td", {class: "reason"}), el("td", {class: "usage"}), el("td", {class: "chart"}),
    el("td", {class: "endpoints"}),
    el("td", {}, el("a", {href: `/executions/${execution.id}/logs/${encodeURIComponent(s.name)}`}, "log")));
  tr.history = [];
  return tr;
}

function updateInstance(tr, execution, s) {
  setState(tr.querySelector(".state"), s.state);
  setText(tr.querySelector(".node"), s.node || "—");
  setText(tr.querySelector(".restarts"), s.restart_count);
  setText(tr.querySelector(".exit"), s.exit_code ?? "");
  setText(tr.querySelector(".reason"), s.reason || "");
  const u = s.usage;
  if (u && !tr.history.some((h) => h.at === u.sampled_at)) {
    tr.history.push({at: u.sampled_at, cpu: u.cpu_percent, memory: u.memory_bytes});
    tr.history.splice(0, tr.history.length - HISTORY);
  }
  const live = u && s.state === "running";
  setText(tr.querySelector(".usage"), live ? `${u.cpu_percent.toFixed(0)}% CPU, ${bytes(u.memory_bytes)}` : "");
  const box = tr.querySelector(".chart");
  if (tr.history.length && box.dataset.samples !== String(tr.history.length) + tr.history.at(-1).at) {
    box.dataset.samples = String(tr.history.length) + tr.history.at(-1).at;
    box.replaceChildren(chart(tr.history, s.memory));
  }
  // links only while the instance runs: after the end the port may serve someone else
  const open = s.state === "running" && !FINAL.includes(execution.state) && execution.state !== "cleaning_up";
  const ends = Object.entries(open ? s.endpoints || {} : {});
  const box2 = tr.querySelector(".endpoints");
  const key = JSON.stringify(ends);
  if (box2.dataset.key !== key) {
    box2.dataset.key = key;
    box2.replaceChildren(...ends.map(([name, url]) => {
      // a web interface opens through the api's proxy (signed in, same origin)
      const port = (tr.ports || []).find((p) => p.name === name);
      const href = port && /^https?:/.test(url) ? `/proxy/${execution.id}/${encodeURIComponent(s.name)}/${port.port_number}/` : null;
      return el("div", {}, href ? el("a", {href, target: "_blank", rel: "noopener", "data-endpoint": name}, name) : `${name}: ${url}`);
    }));
  }
}

function timeline(list, e, seen) {
  const items = [];
  items.push([e.submitted_at, "submitted"]);
  for (const [at, state] of seen) items.push([at, state]);
  if (e.started_at) items.push([e.started_at, "started (every essential instance running)"]);
  for (const s of e.services) {
    if (s.restart_count) items.push([s.updated_at, `${s.name} replaced ${s.restart_count} time${s.restart_count > 1 ? "s" : ""}`]);
    if (!s.essential && s.state === "created" && s.reason) items.push([s.updated_at, `${s.name} reclaimed or waiting again (${s.reason})`]);
  }
  if (e.finished_at) items.push([e.finished_at, `ended ${e.state}${e.error ? ": " + e.error : ""}`]);
  items.sort((a, b) => new Date(a[0]) - new Date(b[0]));
  const key = JSON.stringify(items);
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren(...items.map(([at, what]) => el("li", {}, el("time", {datetime: at}, when(at)), " ", what)));
}

export async function executionPage(content, data, me) {
  let e;
  try {
    e = await api("/executions/" + data.id);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      content.replaceChildren(el("h1", {}, "Execution not found"), el("p", {}, err.message), el("p", {}, el("a", {href: "/executions"}, "Your executions")));
      return;
    }
    throw err;
  }
  const state = stateBadge(e.state);
  const outcome = el("p", {class: "outcome", role: "status"});
  const why = el("p", {class: "waiting"});
  const dl = el("dl", {class: "facts"});
  const tbody = el("tbody");
  const events = el("ol", {class: "timeline"});
  const seen = [];
  const terminate = el("button", {type: "button", class: "danger", id: "terminate"}, "Terminate");
  const again = el("button", {type: "button", class: "secondary", id: "again"}, "Submit again");
  content.replaceChildren(
    el("p", {class: "crumbs"}, el("a", {href: "/executions"}, "Executions"), " / #" + e.id),
    el("h1", {}, el("span", {class: "exec-name"}, e.name), " ", el("span", {class: "muted"}, "#" + e.id), " ", state),
    outcome, why, el("div", {class: "actions"}, terminate, again), dl,
    el("h2", {}, "Instances"),
    el("div", {class: "scroll"}, el("table", {class: "instances"},
      el("thead", {}, el("tr", {}, ...["Instance", "Kind", "State", "Node", "Restarts", "Exit code", "Reason", "Use now", "CPU / memory", "Endpoints", "Log"].map((h) => el("th", {scope: "col"}, h)))),
      tbody)),
    el("h2", {}, "Events"), events);

  const render = async (x) => {
    e = x;
    setState(state, e.state);
    setText(content.querySelector(".exec-name"), e.name);
    setText(outcome, FINAL.includes(e.state)
      ? `Ended ${e.state}${e.exit_code !== null && e.exit_code !== undefined ? ` (exit code ${e.exit_code})` : ""}${e.error ? ": " + e.error : ""}`
      : e.outcome ? `Ending: ${e.outcome}${e.error ? " — " + e.error : ""}` : "");
    setText(why, await whyWaiting(e, me));
    const rows = facts(e);
    if (dl.dataset.key !== JSON.stringify(rows)) {
      dl.dataset.key = JSON.stringify(rows);
      dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    }
    for (const s of e.services) {
      let tr = tbody.querySelector(`tr[data-instance="${CSS.escape(s.name)}"]`);
      if (!tr) {
        tbody.append(tr = instanceRow(e, s));
        const service = ((data.description || {}).services || []).find((x) => x.name === s.service);
        tr.ports = service ? service.ports || [] : [];
      }
      updateInstance(tr, e, s);
    }
    terminate.hidden = FINAL.includes(e.state) || e.state === "cleaning_up";
    again.hidden = !data.description;
    timeline(events, e, seen);
  };
  const reload = async () => {
    try { await render(await api("/executions/" + data.id)); } catch (err) { flash(err.message); }
  };
  terminate.addEventListener("click", async () => {
    if (!(await confirmDialog(`Terminate execution #${e.id} “${e.name}”? Everything it runs is stopped.`, "Terminate"))) return;
    try {
      await api(`/executions/${e.id}/terminate`, {method: "POST"});
      flash("");
      terminate.hidden = true;
    } catch (err) { flash(err.message); }
  });
  again.addEventListener("click", async () => {
    try {
      const x = await api("/executions", {method: "POST", body: {name: e.name, application: data.description}});
      location.assign("/executions/" + x.id);
    } catch (err) { flash(err.message); }
  });
  await render(e);
  follow((ev) => {
    if (ev.execution_id !== e.id) return;
    seen.push([new Date(ev.at * 1000).toISOString(), "now " + ev.state]);
    reload();
  }, reload, "?execution=" + e.id);
  const timer = setInterval(() => {
    if (FINAL.includes(e.state)) clearInterval(timer);
    else if (e.state === "running" || e.state === "starting") reload();
  }, USAGE_EVERY);
}
