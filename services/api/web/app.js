// Zoe's web interface: each page has its own URL; the server names it in <body data-page>.
"use strict";
import {api, el, flash} from "/ui/lib.js";

// page -> [its module, the function that draws it]; a page loads only its own module
const PAGES = {
  login: ["login.js", "loginPage"], shop: ["shop.js", "shopPage"], zapp: ["shop.js", "zappPage"],
  executions: ["executions.js", "executionsPage"], execution: ["execution.js", "executionPage"],
  logs: ["logs.js", "logsPage"], nodes: ["admin.js", "nodesPage"], queue: ["admin.js", "queuePage"],
  users: ["admin.js", "usersPage"],
};
const draw = async (page) => {
  const [file, name] = PAGES[page];
  return (await import("/ui/" + file))[name];
};

function header(me, page) {
  const can = (cap) => me.capabilities.includes(cap);
  document.getElementById("user-name").textContent = me.name;
  document.getElementById("user-role").textContent = me.role;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.nav.split(" ").includes(page)) a.setAttribute("aria-current", "page");
    if (a.hasAttribute("data-admin") && !(can("see-status") || can("change-config"))) a.hidden = true;
  }
  if (!can("change-config")) document.querySelector('#nav a[href="/users"]').hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("sign-out").addEventListener("click", async () => {
    try { await api("/logout", {method: "POST"}); } catch (err) { /* signed out already */ }
    location.assign("/login");
  });
}

async function main() {
  const page = document.body.dataset.page;
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const content = document.getElementById("content");
  if (page === "login") return (await draw("login"))(content, data);
  if (page === "notfound") {
    content.replaceChildren(el("h1", {}, "Page not found"),
      el("p", {}, "There is no page at ", el("code", {}, data.path), "."),
      el("p", {}, el("a", {href: "/executions"}, "Your executions"), " · ", el("a", {href: "/shop"}, "the ZApp shop")));
  }
  const me = await api("/me");
  me.can = (cap) => me.capabilities.includes(cap);
  header(me, page);
  if (PAGES[page]) await (await draw(page))(content, data, me);
}

main().catch((err) => flash(err.message || String(err)));
