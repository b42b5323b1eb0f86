// Zoe's web interface: the ZApp shop, executions and nodes, over the HTTP API.
"use strict";
const api = (path, options = {}) =>
  fetch("/api/v1" + path, {headers: {"Content-Type": "application/json"}, ...options}).then(async (r) => {
    const body = r.headers.get("Content-Type")?.includes("json") ? await r.json() : await r.text();
    if (!r.ok) {
      const lines = [body.error || r.statusText, ...(body.errors || []).map((e) => `${e.path}: ${e.message}`)];
      throw new Error(lines.join("\n"));
    }
    return body;
  });

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
};

const showError = (err) => {
  const p = document.getElementById("error");
  p.textContent = err ? String(err.message || err) : "";
  p.hidden = !err;
};

// A small Markdown subset: headings, code blocks, inline code, paragraphs and lists.
function markdown(text) {
  const out = el("div");
  text.split(/\n(?=#)|\n\s*\n/).forEach((block) => {
    block = block.trim();
    if (!block) return;
    const h = block.match(/^(#{1,4})\s+(.*)/);
    if (h) out.append(el("h" + (h[1].length + 2), {}, h[2]));
    else if (block.startsWith("```")) out.append(el("pre", {}, block.replace(/^```\w*\n?|```$/g, "")));
    else if (/^[-*] /.test(block)) out.append(el("ul", {}, ...block.split(/\n[-*] /).map((i) => el("li", {}, i.replace(/^[-*] /, "")))));
    else out.append(el("p", {}, block));
  });
  return out;
}

async function showShop() {
  const grid = document.getElementById("shop-grid");
  const zapps = await api("/zapps");
  grid.replaceChildren(...zapps.map((z) => el("div", {class: "card", onclick: () => showZApp(z.id)},
    z.logo_url ? el("img", {src: z.logo_url, alt: ""}) : "",
    el("div", {class: "category"}, z.category),
    el("h3", {}, z.name),
    el("div", {class: "kind"}, z.will_end ? "ephemeral" : "long-running"))));
}

async function showZApp(id) {
  const z = await api("/zapps/" + id);
  const form = el("form", {onsubmit: async (e) => {
    e.preventDefault();
    const params = {};
    for (const p of z.parameters) params[p.name] = form.elements[p.name].value;
    try {
      const ex = await api("/executions", {method: "POST", body: JSON.stringify({name: form.elements.name.value, zapp: id, params})});
      showError(null);
      location.hash = "#executions";
      showExecution(ex.id);
    } catch (err) { showError(err); }
  }},
    el("label", {for: "name"}, "Execution name"), el("input", {name: "name", value: z.id.replace("/", "-"), required: ""}),
    ...z.parameters.flatMap((p) => [
      el("label", {for: p.name}, p.readable_name),
      el("input", {name: p.name, value: p.default, type: p.type === "int" ? "number" : "text",
        ...(p.min != null ? {min: p.min} : {}), ...(p.max != null ? {max: p.max} : {}), ...(p.step != null ? {step: p.step} : {})}),
      el("small", {}, " " + p.description)]),
    el("p", {}, el("button", {type: "submit"}, "Start")));
  const detail = document.getElementById("zapp-detail");
  detail.replaceChildren(el("h2", {}, z.name), markdown(z.readme), form);
  detail.hidden = false;
}

async function showExecutions() {
  const rows = await api("/executions?limit=200");
  document.getElementById("executions-body").replaceChildren(...rows.map((e) =>
    el("tr", {class: "clickable", onclick: () => showExecution(e.id)},
      el("td", {}, e.id), el("td", {}, e.name), el("td", {class: "state state-" + e.state}, e.state),
      el("td", {}, e.submitted_at.slice(0, 19).replace("T", " ")), el("td", {}, ""))));
}

let shownExecution = null;
async function showExecution(id) {
  shownExecution = id;
  const e = await api("/executions/" + id);
  const detail = document.getElementById("execution-detail");
  const active = !["finished", "failed", "terminated", "error"].includes(e.state);
  detail.replaceChildren(
    el("h2", {}, `${e.name} (#${e.id}) `, el("span", {class: "state state-" + e.state}, e.state)),
    e.error ? el("p", {class: "error"}, e.error) : "",
    el("table", {},
      el("thead", {}, el("tr", {}, ...["Instance", "Kind", "State", "Node", "CPU / memory", "Exit", "Reason", "Endpoints", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...e.services.map((s) => el("tr", {},
        el("td", {}, s.name), el("td", {}, s.essential ? "essential" : "elastic"),
        el("td", {class: "state state-" + s.state}, s.state), el("td", {}, s.node || "-"),
        el("td", {}, s.usage && s.state === "running" ? `${s.usage.cpu_percent.toFixed(0)}% / ${(s.usage.memory_bytes / 2 ** 20).toFixed(0)} MiB` : ""),
        el("td", {}, s.exit_code ?? ""), el("td", {}, s.reason || ""),
        el("td", {}, ...Object.entries(s.endpoints || {}).map(([k, v]) => el("div", {}, `${k}: `, /^https?:/.test(v) ? el("a", {href: v, target: "_blank"}, v) : v))),
        el("td", {}, el("a", {href: `/api/v1/executions/${e.id}/services/${s.name}/logs`, target: "_blank"}, "log")))))),
    active ? el("p", {}, el("button", {class: "danger", onclick: async () => {
      try { await api(`/executions/${e.id}/terminate`, {method: "POST"}); showExecution(e.id); } catch (err) { showError(err); }
    }}, "Terminate")) : "");
  detail.hidden = false;
}

async function showNodes() {
  const nodes = await api("/nodes");
  const gib = (b) => (b / 2 ** 30).toFixed(1);
  document.getElementById("nodes-body").replaceChildren(...nodes.map((n) => el("tr", {},
    el("td", {}, n.name), el("td", {class: "state state-" + (n.state === "up" ? "running" : "failed")}, n.state),
    el("td", {}, `${n.cores_reserved.toFixed(1)} / ${n.cores}`), el("td", {}, `${gib(n.memory_reserved)} / ${gib(n.memory)} GiB`),
    el("td", {}, n.instances), el("td", {}, n.labels.join(", ")))));
}

const pages = {shop: showShop, executions: showExecutions, nodes: showNodes};
async function route() {
  const page = (location.hash || "#shop").slice(1);
  for (const name of Object.keys(pages)) {
    document.getElementById(name).hidden = name !== page;
    document.getElementById("nav-" + name).classList.toggle("active", name === page);
  }
  try { await (pages[page] || showShop)(); showError(null); } catch (err) { showError(err); }
}
window.addEventListener("hashchange", route);
setInterval(async () => {
  const page = (location.hash || "#shop").slice(1);
  if (page === "shop") return;
  try {
    await pages[page]();
    if (page === "executions" && shownExecution !== null) await showExecution(shownExecution);
  } catch (err) { showError(err); }
}, 2000);
route();
