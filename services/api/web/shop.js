// The ZApp shop (/shop) and one ZApp (/shop/{zapp}) with its start form.
"use strict";
import {api, el, GiB, showFieldErrors} from "/ui/lib.js";

export async function shopPage(content) {
  const zapps = await api("/zapps");
  const categories = [...new Set(zapps.map((z) => z.category))];
  content.replaceChildren(el("h1", {}, "ZApp shop"),
    ...categories.map((c) => el("section", {"aria-label": c},
      el("h2", {}, c),
      el("ul", {class: "grid"}, ...zapps.filter((z) => z.category === c).map((z) =>
        el("li", {class: "card zapp-card"},
          z.logo_url ? el("img", {src: z.logo_url, alt: "", width: 48, height: 48}) : null,
          el("h3", {}, el("a", {href: "/shop/" + z.id}, z.name)),
          el("p", {class: "muted"}, z.will_end ? "ends by itself" : "runs until terminated")))))));
}

const field = (id, path, label, input, help) => el("div", {class: "field"},
  el("label", {for: id}, label), input,
  help ? el("small", {id: id + "-help", class: "muted"}, help) : null,
  el("div", {class: "field-error", "data-path": path, "data-for": id, role: "alert", hidden: true}));

function parameterInput(p) {
  const id = "param-" + p.name;
  const attrs = {id, name: id, value: p.default ?? "", "aria-describedby": p.description ? id + "-help" : null};
  if (p.type === "int" || p.type === "number") Object.assign(attrs, {type: "number", min: p.min, max: p.max, step: p.step ?? (p.type === "int" ? 1 : "any")});
  return field(id, "parameters." + p.name, p.readable_name || p.name, el("input", attrs), p.description);
}

// Per-service overrides of what a service reserves and may use, in GiB and cores.
function resourceInputs(services) {
  return el("fieldset", {class: "resources"},
    el("legend", {}, "Resources per service (leave as is to keep the ZApp's)"),
    ...services.map((s) => {
      const r = s.resources || {};
      const mem = r.memory || {}, cpu = r.cores || {};
      const num = (kind, bound, value, scale) => {
        const id = `res-${s.name}-${kind}-${bound}`;
        const shown = value === null || value === undefined ? "" : +(value / scale).toFixed(3);
        return field(id, `resources.${s.name}.${kind}.${bound}`,
          `${kind === "memory" ? "Memory" : "Cores"} ${bound === "min" ? "reserved" : "limit"}${kind === "memory" ? " (GiB)" : ""}`,
          el("input", {id, type: "number", min: 0, step: "any", value: shown, "data-service": s.name,
            "data-kind": kind, "data-bound": bound, "data-scale": scale, "data-initial": shown}));
      };
      return el("div", {class: "service-resources"}, el("h3", {}, s.name),
        el("div", {class: "row"}, num("memory", "min", mem.min, GiB), num("memory", "max", mem.max, GiB),
          num("cores", "min", cpu.min, 1), num("cores", "max", cpu.max, 1)));
    }));
}

function changedResources(form) {
  const out = {};
  for (const input of form.querySelectorAll("input[data-service]")) {
    if (input.value === input.dataset.initial) continue;
    const {service, kind, bound, scale} = input.dataset;
    let value = input.value === "" ? null : Number(input.value) * Number(scale);
    if (value !== null && kind === "memory") value = Math.round(value);
    ((out[service] ??= {})[kind] ??= {})[bound] = value;
  }
  return Object.keys(out).length ? out : undefined;
}

export async function zappPage(content, data, me) {
  const z = await api("/zapps/" + encodeURIComponent(data.zapp).replace(/%2F/g, "/"));
  const form = el("form", {class: "card start", novalidate: true, "aria-labelledby": "start-title"},
    el("h2", {id: "start-title"}, "Start " + z.name),
    el("div", {class: "form-errors", role: "alert", tabindex: "-1", hidden: true}),
    field("exec-name", "name", "Execution name", el("input", {id: "exec-name", name: "exec-name", required: true, value: z.id.replace(/\//g, "-")})),
    ...z.parameters.map(parameterInput),
    me.can("customise") ? resourceInputs(z.description.services) : null,
    el("p", {}, el("button", {type: "submit"}, "Start")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const params = {};
    for (const p of z.parameters) {
      const v = form.querySelector("#param-" + CSS.escape(p.name)).value;
      params[p.name] = (p.type === "int") && v !== "" ? Number(v) : v;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const ex = await api("/executions", {method: "POST", body: {
        name: form.querySelector("#exec-name").value, zapp: z.id, params, resources: changedResources(form)}});
      location.assign("/executions/" + ex.id);
    } catch (err) {
      // the resulting description's errors name a service by index: shown by its fields
      const names = z.description.services.map((sv) => sv.name);
      for (const fe of err.errors || []) {
        fe.path = fe.path.replace(/^services\[(\d+)\]\.resources\./, (m, i) => `resources.${names[i]}.`);
      }
      showFieldErrors(form, err);
      button.disabled = false;
    }
  });
  const readme = el("article", {class: "card readme", "aria-label": "About " + z.name});
  readme.innerHTML = data.readme_html;  // rendered on the server, raw HTML escaped there
  content.replaceChildren(
    el("p", {class: "crumbs"}, el("a", {href: "/shop"}, "Shop"), " / ", z.category),
    el("div", {class: "title"}, z.logo_url ? el("img", {src: z.logo_url, alt: "", width: 48, height: 48}) : null, el("h1", {}, z.name)),
    ...(z.warnings || []).map((w) => el("p", {class: "warning"}, w)),
    form, readme);
}
