// Zoe's web interface: each page has its own URL; the server names it in <body data-page>.
"use strict";
import {api, ApiError, el, flash} from "/ui/lib.js";
import {shopPage, zappPage} from "/ui/shop.js";
import {executionsPage} from "/ui/executions.js";
import {executionPage} from "/ui/execution.js";
import {logsPage} from "/ui/logs.js";
import {nodesPage, queuePage, usersPage} from "/ui/admin.js";
import {loginPage} from "/ui/login.js";

const PAGES = {
  shop: shopPage, zapp: zappPage, executions: executionsPage, execution: executionPage,
  logs: logsPage, nodes: nodesPage, queue: queuePage, users: usersPage,
};

// The signed-in user; before users exist the API has no /me and everyone acts as admin.
async function whoAmI() {
  try {
    return await api("/me");
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      return {name: "admin", role: "admin", capabilities: ["operate-all", "see-status", "change-config", "customise", "submit"]};
    }
    throw err;
  }
}

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
  if (page === "login") return loginPage(content, data);
  if (page === "notfound") {
    content.replaceChildren(el("h1", {}, "Page not found"),
      el("p", {}, "There is no page at ", el("code", {}, data.path), "."),
      el("p", {}, el("a", {href: "/executions"}, "Your executions"), " · ", el("a", {href: "/shop"}, "the ZApp shop")));
  }
  const me = await whoAmI();
  me.can = (cap) => me.capabilities.includes(cap);
  header(me, page);
  if (PAGES[page]) await PAGES[page](content, data, me);
}

main().catch((err) => flash(err.message || String(err)));
