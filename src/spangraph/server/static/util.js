// Small DOM and formatting helpers shared by the page's modules. Values always go in
// as text (textContent), never as HTML.

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

export const $ = (id) => document.getElementById(id);

/** Build an element: h("a", {href, class: "x", dataset: {...}, on: {click}}, ...children). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  fill(el, ...children);
  return el;
}

/** Append children (nested arrays flattened; null, undefined and false left out). */
export function fill(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return fill(el, ...children);
}

/** The tokens a model call reported, `{ input, output }` (null where it reported none):
 * OpenTelemetry's `gen_ai.usage.*`, else OpenInference's `llm.token_count.*` (spans other
 * instrumentations sent). */
export function usageOf(attributes) {
  const first = (keys) => {
    for (const key of keys) if (Number.isFinite(attributes[key])) return attributes[key];
    return null;
  };
  return {
    input: first(["gen_ai.usage.input_tokens", "llm.token_count.prompt"]),
    output: first(["gen_ai.usage.output_tokens", "llm.token_count.completion"]),
  };
}

// -- formatting ----------------------------------------------------------------------------

/** A duration in ms as text: "12.5 ms", "1.25 s", "42.0 s", "2 min 0 s", "26 h 3 min 4 s".
 * Rounded first, then split (59 999 ms is "1 min 0 s", never "60.0 s"). */
export function fmtDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (Number(ms.toFixed(1)) < 100) return `${ms.toFixed(1)} ms`;
  if (Math.round(ms) < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (Number(s.toFixed(2)) < 10) return `${s.toFixed(2)} s`;
  if (Number(s.toFixed(1)) < 60) return `${s.toFixed(1)} s`;
  const total = Math.round(s);
  const hours = Math.floor(total / 3600);
  const min = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  return hours ? `${hours} h ${min} min ${sec} s` : `${min} min ${sec} s`;
}

export function fmtTime(ns) {
  if (typeof ns !== "number") return "";
  const d = new Date(ns / 1e6);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export function fmtValue(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  return JSON.stringify(value); // (a raw JSON value, see api.js parseJson: its digits)
}

/** User text (a name, an id) inside a line of other text: isolated, so a right-to-left
 * override in it cannot reorder the rest of the line. */
export function bdi(text) {
  return h("bdi", { text: fmtValue(text) });
}

/** A value as text; a long one (a stack trace, a prompt) folded behind its first line. */
export function valueView(value) {
  const text = fmtValue(value);
  if (text.length <= 200) return text;
  const head = text.split("\n", 1)[0].slice(0, 90);
  return h("details", { class: "long" }, h("summary", { text: `${head}… (${text.length} chars)` }), h("pre", { text }));
}

/** Text from span data as one part of a class name: anything but letters, digits, `-`
 * and `_` becomes `_` (a kind "step hidden" must not add the class `hidden`). */
export function classPart(text) {
  return String(text).toLowerCase().replace(/[^a-z0-9_-]/g, "_");
}

/** A span's name as shown: an empty (or missing) name reads "(unnamed)", in the runs
 * list, the tree, the run's header and the node panel alike. */
export function displayName(name) {
  return name === null || name === undefined || name === "" ? "(unnamed)" : String(name);
}

export function stateBadge(state) {
  const s = state || "unknown";
  return h("span", { class: `badge state state-${classPart(s)}`, dataset: { state: s }, text: s });
}

export function kindBadge(kind) {
  const k = kind || "span";
  return h("span", { class: `badge kind kind-${classPart(k)}`, text: k });
}

export function betterState(old, incoming) {
  if (!incoming) return old;
  if (TERMINAL.has(old) && incoming === "running") return old; // the graph lags the stream
  return incoming;
}

/** A span's duration as text; a running span's time so far, "20.8 s so far" (not
 * "20.8 s…", which read as text cut short), or, beside its "running" badge in the tree
 * (`soFar` ""), "20.8 s". */
export function durationText(n, soFar = " so far") {
  if (typeof n.duration_ms === "number" && n.state !== "running") return fmtDuration(n.duration_ms);
  if (n.state === "running" && typeof n.start_ns === "number") {
    const ms = Date.now() - n.start_ns / 1e6;
    if (ms >= 0) return `${fmtDuration(ms)}${soFar}`;
  }
  return "";
}

/** A span's status message as shown: "Type: " and nothing after it (an exception raised
 * without a message, such as a TimeoutError()) is the type alone. "" when it has none. */
export function statusMessage(n) {
  return n && n.status_message ? String(n.status_message).replace(/:\s*$/, "") : "";
}

/** The first line of `text` that is not blank, at most `max` characters (cut with "…"). */
export function firstLine(text, max = 120) {
  const line = [...(String(text).split("\n").find((l) => l.trim()) ?? "").trim()];
  return line.length > max ? `${line.slice(0, max - 1).join("")}…` : line.join("");
}

