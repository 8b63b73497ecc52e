// The JSON API, with the bearer token: asked for once on the first 401 (a modal dialog)
// and kept in sessionStorage, for this tab only.

import { $ } from "./util.js";

const TOKEN_KEY = "spangraph.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

let token = sessionStorage.getItem(TOKEN_KEY);
let tokenPrompt = null;

/** Ask for the token once (a modal dialog); concurrent 401s share one prompt. */
export function askToken(refused) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $("token-dialog");
  $("token-error").hidden = !refused;
  $("token-input").value = "";
  tokenPrompt = new Promise((resolve) => {
    const form = $("token-form");
    const submit = (ev) => {
      ev.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) return;
      token = value;
      sessionStorage.setItem(TOKEN_KEY, value);
      dialog.close();
    };
    const closed = () => { // submitted, or dismissed while a token is kept
      form.removeEventListener("submit", submit);
      dialog.removeEventListener("close", closed);
      $("token-change").hidden = !token;
      tokenPrompt = null;
      resolve(token);
    };
    form.addEventListener("submit", submit);
    dialog.addEventListener("close", closed);
  });
  dialog.showModal();
  $("token-input").focus();
  return tokenPrompt;
}

export async function api(path) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(path, { headers });
    if (res.status === 401) {
      await askToken(Boolean(token) || attempt > 0);
      continue;
    }
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail ?? detail; } catch { /* not JSON */ }
      throw new ApiError(res.status, typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return res.json();
  }
}

export const config = { jaeger_url: "http://localhost:16686", auth: false, live: true };

export function jaegerHref(node) {
  if (!node) return null;
  if (node.jaeger_url) return node.jaeger_url;
  if (!node.trace_id) return null;
  // ids from the stream (other programs' spans) go in as path and query parts, nothing else
  const trace = encodeURIComponent(node.trace_id);
  return `${config.jaeger_url}/trace/${trace}` + (node.span_id ? `?uiFind=${encodeURIComponent(node.span_id)}` : "");
}


/** The token in use (null when the service needs none or none was given yet). */
export function currentToken() {
  return token;
}
