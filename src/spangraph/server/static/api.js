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
  for (;;) {
    const headers = { Accept: "application/json" };
    const sent = token;
    if (sent) headers.Authorization = `Bearer ${sent}`;
    const res = await fetch(path, { headers });
    if (res.status === 401) {
      // a token given since this request left: try it; else ask, saying "refused" only
      // when a token was sent
      if (!token || token === sent) await askToken(Boolean(sent));
      continue;
    }
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail ?? detail; } catch { /* not JSON */ }
      throw new ApiError(res.status, typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return parseJson(await res.text());
  }
}

// Fields of the API and the stream that are numbers to compute with (nanosecond times
// are above 2^53: rounded to the nearest double, as they always were).
const NUMERIC_FIELDS = new Set([
  "start_ns", "end_ns", "duration_ms", "time_ns", "time_unix_nano", "seq", "since", "since_ns",
  "nodes", "failed",
]);
const KEEPS_BIG_INTS = typeof JSON.rawJSON === "function";

/** JSON.parse, but a whole number beyond 2^53 in span data (an attribute value, say)
 * keeps its digits: it becomes a raw JSON value (JSON.rawJSON), which JSON.stringify
 * (and so fmtValue) writes out as it came. Browsers without `JSON.rawJSON` and the
 * source text of values (JSON.parse's reviver context) parse as JSON.parse does. */
export function parseJson(text) {
  if (!KEEPS_BIG_INTS) return JSON.parse(text);
  return JSON.parse(text, (key, value, context) => {
    if (typeof value !== "number" || Number.isSafeInteger(value) || NUMERIC_FIELDS.has(key)) return value;
    const source = context?.source;
    if (typeof source !== "string" || !/^-?\d+$/.test(source)) return value;
    try {
      return JSON.rawJSON(source);
    } catch {
      return value;
    }
  });
}

export const config = { jaeger_url: "http://localhost:16686", auth: false, live: true };

/** A node's Jaeger link; none for an option never explored (no span of it was ever
 * exported, so Jaeger has nothing to show: the API gives it no `jaeger_url` either). */
export function jaegerHref(node) {
  if (!node || node.state === "unexplored") return null;
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
