// The JSON API, with the bearer token: asked for once on the first 401 (a modal dialog)
// and kept in sessionStorage, for this tab only.

import { $ } from "./util.js";

const TOKEN_KEY = "spangraph.token";

export class ApiError extends Error {
  constructor(status, detail, res) {
    super(`${status}: ${detail}`);
    this.status = status;
    // a 404 for an id that is a span's, trace's or branch's of a run names that run
    const run = res?.headers.get("X-Spangraph-Run");
    this.run = null;
    if (run) {
      try { this.run = decodeURIComponent(run); } catch { /* not percent-encoded: left out */ }
    }
    this.idKind = res?.headers.get("X-Spangraph-Id-Kind") ?? null;
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
      throw new ApiError(
        res.status, typeof detail === "string" ? detail : JSON.stringify(detail), res);
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
 * source text of values (JSON.parse's reviver context) parse as JSON.parse does.
 * JSON.parse applies a reviver recursively, so on an answer nested a few thousand
 * levels deep (the tree of a run ~1 700 levels deep) it overflows the stack (a
 * RangeError): such an answer is parsed by parseDeep, without recursion, to the same
 * value. */
export function parseJson(text) {
  if (!KEEPS_BIG_INTS) return JSON.parse(text);
  try {
    return JSON.parse(text, (key, value, context) => keepDigits(key, value, context?.source));
  } catch (err) {
    if (!(err instanceof RangeError)) throw err;
    return parseDeep(text);
  }
}

/** A number as the reviver leaves it: a whole number beyond 2^53 (written as digits,
 * not in a NUMERIC_FIELDS field) as a raw JSON value of its digits. */
function keepDigits(key, value, source) {
  if (typeof value !== "number" || Number.isSafeInteger(value) || NUMERIC_FIELDS.has(key)) return value;
  if (typeof source !== "string" || !/^-?\d+$/.test(source)) return value;
  try {
    return JSON.rawJSON(source);
  } catch {
    return value;
  }
}

const JSON_NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

/** JSON text to its value as parseJson gives it, with a stack of its own instead of
 * recursion (any depth). Strings with escapes are read by JSON.parse. */
export function parseDeep(text) {
  let i = 0;
  const fail = () => {
    throw new SyntaxError(`JSON: unexpected ${i < text.length ? `"${text[i]}"` : "end"} at ${i}`);
  };
  const space = () => {
    let c = text.charCodeAt(i);
    while (c === 32 || c === 10 || c === 13 || c === 9) c = text.charCodeAt(++i);
  };
  const string = () => { // at the opening quote
    if (text.charCodeAt(i) !== 34) fail();
    let j = i + 1;
    let escaped = false;
    for (let c = text.charCodeAt(j); c !== 34; c = text.charCodeAt(j)) {
      if (Number.isNaN(c) || c < 32) fail();
      if (c === 92) {
        escaped = true;
        j += 2;
      } else {
        j += 1;
      }
    }
    const s = escaped ? JSON.parse(text.slice(i, j + 1)) : text.slice(i + 1, j);
    i = j + 1;
    return s;
  };
  const name = () => { // a member's name and its colon
    space();
    const s = string();
    space();
    if (text.charCodeAt(i++) !== 58) fail();
    return s;
  };
  const open = []; // the arrays and objects being read: { into, array, key }
  let key = ""; // the name (an index in an array) of the value read next
  for (;;) {
    space();
    let value;
    const c = text.charCodeAt(i);
    if (c === 123 || c === 91) { // { or [
      const array = c === 91;
      const into = array ? [] : {};
      i += 1;
      space();
      if (text.charCodeAt(i) === (array ? 93 : 125)) {
        i += 1;
        value = into;
      } else {
        open.push({ into, array, key });
        key = array ? "0" : name();
        continue;
      }
    } else if (c === 34) {
      value = string();
    } else if (text.startsWith("true", i)) {
      value = true;
      i += 4;
    } else if (text.startsWith("false", i)) {
      value = false;
      i += 5;
    } else if (text.startsWith("null", i)) {
      value = null;
      i += 4;
    } else {
      JSON_NUMBER.lastIndex = i;
      const m = JSON_NUMBER.exec(text);
      if (!m) fail();
      i = JSON_NUMBER.lastIndex;
      value = keepDigits(key, Number(m[0]), m[0]);
    }
    // the value goes into the innermost open array or object; those it ends are values too
    for (;;) {
      if (!open.length) {
        space();
        if (i !== text.length) fail();
        return value;
      }
      const top = open[open.length - 1];
      if (top.array) top.into.push(value);
      else if (key === "__proto__") { // a name as any other (as JSON.parse makes it)
        Object.defineProperty(top.into, key, { value, writable: true, enumerable: true, configurable: true });
      } else top.into[key] = value;
      space();
      const d = text.charCodeAt(i++);
      if (d === 44) { // ,
        key = top.array ? String(top.into.length) : name();
        break;
      }
      if (d !== (top.array ? 93 : 125)) {
        i -= 1;
        fail();
      }
      open.pop();
      value = top.into;
      key = top.key;
    }
  }
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
