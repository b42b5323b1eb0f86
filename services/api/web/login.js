// The sign-in page: POST /api/v1/login sets the session cookies, then on to ?next=.
"use strict";
import {api, el, showFieldErrors} from "/ui/lib.js";

export function loginPage(content, data) {
  const form = el("form", {class: "card narrow", novalidate: true},
    el("h1", {}, "Sign in to Zoe"),
    el("div", {class: "form-errors", role: "alert", tabindex: "-1", hidden: true}),
    el("label", {for: "username"}, "Username"),
    el("input", {id: "username", name: "username", autocomplete: "username", required: true, autofocus: true}),
    el("label", {for: "password"}, "Password"),
    el("input", {id: "password", name: "password", type: "password", autocomplete: "current-password", required: true}),
    el("p", {}, el("button", {type: "submit"}, "Sign in")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("/login", {method: "POST", body: {username: form.username.value, password: form.password.value}});
      location.assign(data.next || "/executions");
    } catch (err) {
      showFieldErrors(form, err.status === 401 ? {message: "Wrong username or password.", errors: []} : err);
    }
  });
  content.replaceChildren(form);
}
