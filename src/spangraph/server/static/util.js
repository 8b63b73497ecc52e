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
  const first = (keys, from = attributes) => {
    for (const key of keys) if (Number.isFinite(from[key])) return from[key];
    return null;
  };
  const usage = {
    input: first(["gen_ai.usage.input_tokens", "llm.token_count.prompt"]),
    output: first(["gen_ai.usage.output_tokens", "llm.token_count.completion"]),
  };
  // Langfuse's generations: JSON, in its names or those of the provider's answer
  const details = attributes["langfuse.observation.usage_details"];
  if ((usage.input === null || usage.output === null) && typeof details === "string" && details.startsWith("{")) {
    let parsed = null;
    try { parsed = JSON.parse(details); } catch { /* not JSON: no counts */ }
    if (parsed && typeof parsed === "object") {
      usage.input ??= first(["input", "prompt_tokens", "input_tokens"], parsed);
      usage.output ??= first(["output", "completion_tokens", "output_tokens"], parsed);
    }
  }
  return usage;
}

/** What a model call's span says of the call, whichever conventions it follows
 * (OpenTelemetry's GenAI, OpenInference's, the Anthropic SDK's own): `[label, text]`
 * pairs for Model, Provider, Tokens and Finish, those it has. `events`: the span's,
 * where spangraph's own `llm.complete` gives the finish reason. */
export function modelFacts(n, events = []) {
  const a = n.attributes || {};
  const text = (...keys) => {
    for (const key of keys) if (typeof a[key] === "string" && a[key]) return a[key];
    return null;
  };
  const out = [];
  const model = text("gen_ai.response.model", "gen_ai.request.model", "llm.model_name",
    "langfuse.observation.model.name");
  if (model) out.push(["Model", model]);
  const provider = text("gen_ai.provider.name", "llm.provider", "gen_ai.system", "llm.system");
  if (provider) out.push(["Provider", provider]);
  const { input, output } = usageOf(a);
  if (input !== null || output !== null) {
    const parts = [ // what it reported: an unknown count is not 0
      input === null ? null : `${input.toLocaleString()} in`,
      output === null ? null : `${output.toLocaleString()} out`,
    ].filter(Boolean);
    const cached = a["gen_ai.usage.cache_read.input_tokens"] ?? a["llm.token_count.prompt_details.cache_read"];
    if (Number.isFinite(cached) && cached > 0) parts.push(`${cached.toLocaleString()} of the input from the cache`);
    out.push(["Tokens", parts.join(", ")]);
  }
  let finish = a["gen_ai.response.finish_reasons"];
  if (typeof finish === "string" && finish.startsWith("[")) {
    // Mastra writes the list as JSON text: `["stop"]`
    try { finish = JSON.parse(finish); } catch { /* not JSON: shown as it is */ }
  }
  if (Array.isArray(finish)) finish = finish.filter((r) => typeof r === "string" && r).join(", ");
  if (typeof finish !== "string" || !finish) finish = text("anthropic.message.stop_reason", "llm.finish_reason");
  if (!finish) {
    const done = events.find((e) => e.name === "llm.complete");
    const reason = done && done.attributes ? done.attributes.finish_reason : null;
    finish = typeof reason === "string" && reason ? reason : null;
  }
  if (finish) out.push(["Finish", finish]);
  return out;
}

/** The model calls among `nodes` (LLM spans), each counted once where two
 * instrumentations recorded the same call: spans with the same `gen_ai.response.id`
 * (the Anthropic SDK's own span and OpenLLMetry's), and a span of another name around
 * another LLM span, its child or its sibling within its time, that reported the same
 * tokens (LangChain's span around the OpenAI client's), or that failed with it, neither
 * reporting tokens, or that says nothing of the call (no tokens, no answer id) and has
 * it as its only LLM child; never two with different answer ids. Calls of one name made
 * at once (the same prompt sent five times) stay five. The spans of one call are grouped
 * (whatever the order of nodes), and the one kept is the one that reports the most of its
 * usage, then the innermost. */
export function modelCalls(nodes) {
  const calls = [];
  for (const n of nodes) if (n.kind === "llm" && n.state !== "unexplored") calls.push(n);
  // the spans of one call (two instrumentations record it, or a layer around the call
  // records it again) are grouped, and a group counts once, whatever the order of nodes
  const up = new Map(calls.map((n) => [n.span_id, n.span_id]));
  const find = (id) => {
    while (up.get(id) !== id) {
      up.set(id, up.get(up.get(id)));
      id = up.get(id);
    }
    return id;
  };
  let joined = false;
  const join = (a, b) => {
    up.set(find(a.span_id), find(b.span_id));
    joined = true;
  };
  const byAnswer = new Map();
  for (const n of calls) {
    const id = answerOf(n);
    if (typeof id !== "string") continue;
    const seen = byAnswer.get(id);
    if (seen) join(seen, n);
    else byAnswer.set(id, n);
  }
  const byId = new Map(calls.map((n) => [n.span_id, n]));
  const kids = new Map(); // LLM span -> how many LLM spans are its children
  for (const n of calls) {
    if (byId.has(n.parent_span_id)) kids.set(n.parent_span_id, (kids.get(n.parent_span_id) ?? 0) + 1);
  }
  const siblings = new Map();
  for (const n of calls) {
    const parent = byId.get(n.parent_span_id);
    if (parent) {
      const only = kids.get(parent.span_id) === 1;
      // (or a span that says nothing of the call, no tokens, no answer id, around this
      // one call alone: Haystack's agent's model call around an OpenAI instrumentation's;
      // or around it alone, counts that agree where both say one: a stream left early,
      // OpenInference's span with the output so far, the SDK's own with the input only)
      const silent = only && !reported(parent) && !answerOf(parent);
      if (silent || sameCall(parent, n, only)) join(parent, n);
    }
    const list = siblings.get(n.parent_span_id);
    if (list) list.push(n);
    else siblings.set(n.parent_span_id, [n]);
  }
  for (const list of siblings.values()) {
    if (list.length < 2) continue;
    list.sort((a, b) => (a.start_ns ?? 0) - (b.start_ns ?? 0));
    let open = [];
    for (const n of list) {
      open = open.filter((o) => (o.end_ns ?? Infinity) >= (n.start_ns ?? 0));
      const around = open.find((o) => within(o, n) && sameCall(o, n));
      if (around) join(around, n);
      open.push(n);
    }
  }
  if (!joined) return calls;
  // each group by the span that says the most of the call (then the innermost: the one
  // that started last)
  const best = new Map();
  for (const n of calls) {
    const root = find(n.span_id);
    const kept = best.get(root);
    if (!kept || fields(n) > fields(kept) || (fields(n) === fields(kept) && (n.start_ns ?? 0) > (kept.start_ns ?? 0))) {
      best.set(root, n);
    }
  }
  const keep = new Set([...best.values()].map((n) => n.span_id));
  return calls.filter((n) => keep.has(n.span_id));
}

function reported(n) {
  const { input, output } = usageOf(n.attributes || {});
  return input !== null || output !== null;
}

function within(outer, inner) {
  return outer.start_ns != null && inner.start_ns != null && outer.end_ns != null
    && inner.end_ns != null && outer.start_ns <= inner.start_ns && inner.end_ns <= outer.end_ns;
}

function answerOf(n) {
  return (n.attributes ? n.attributes["gen_ai.response.id"] : null) || null;
}

function fields(n) {
  const { input, output } = usageOf(n.attributes || {});
  return (input !== null) + (output !== null);
}

function sameCall(outer, inner, partly = false) {
  // one instrumentation's calls made at once have one name, and each an answer id or
  // none; a call another instrumentation names alike has an id where this one has none
  // (Traceloop JS: LangChain's `chat gpt-4o-mini` around OpenAI's)
  const [idA, idB] = [answerOf(outer), answerOf(inner)];
  if (outer.name === inner.name && Boolean(idA) === Boolean(idB)) return false;
  if (idA && idB && idA !== idB) return false;
  const a = usageOf(outer.attributes || {});
  const b = usageOf(inner.attributes || {});
  if (a.input === null && a.output === null && b.input === null && b.output === null) {
    return outer.state === "failed" && inner.state === "failed";
  }
  if (!partly) return a.input === b.input && a.output === b.output;
  // `partly`: the counts both say agree, and they say one at least
  const both = [[a.input, b.input], [a.output, b.output]].filter(([x, y]) => x !== null && y !== null);
  return both.length > 0 && both.every(([x, y]) => x === y);
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

/** Whether `name` is in `text` as a word of its own (not "run" in "running"). */
function namedIn(text, name) {
  for (let at = text.indexOf(name); at !== -1; at = text.indexOf(name, at + 1)) {
    const before = at ? text[at - 1] : "";
    const after = text[at + name.length] ?? "";
    if (!/[A-Za-z0-9_]/.test(before) && !/[A-Za-z0-9_]/.test(after)) return true;
  }
  return false;
}

/** A node's name as the tree, the header and the node panel show it: `displayName`, and
 * for a tool span named after its library's class, the tool it called first:
 * "get_weather (SimpleTool)" (see `toolName`); for a model call whose name does not
 * say its model, the model after it: "chat (gpt-4o-mini)" (see `modelName`). */
export function shownName(n) {
  const name = formattedName(n) ?? displayName(n.name);
  const tool = toolName(n);
  if (tool) return `${tool} (${name})`;
  const model = modelName(n, name);
  return model ? `${name} (${model})` : name;
}

/** Logfire names its spans by a message template (`Chat Completion with
 * {request_data[model]!r}`) and writes the message in `logfire.msg`: that, for such a
 * span; else null. */
function formattedName(n) {
  const msg = n.attributes ? n.attributes["logfire.msg"] : null;
  return typeof msg === "string" && msg && String(n.name ?? "").includes("{") ? msg : null;
}

/** The model a model call asked for, when its span's name does not say it (Strands'
 * `chat`, LangChain's `ChatOpenAI`): OpenTelemetry's `gen_ai.request.model`,
 * OpenInference's `llm.model_name`, the model that answered (`gen_ai.response.model`) or
 * the Vercel AI SDK's `ai.model.id`; null when there is none or the name holds it. */
export function modelName(n, name = String(n?.name ?? "")) {
  if (!n || n.kind !== "llm") return null;
  const a = n.attributes || {};
  const found = ["gen_ai.request.model", "llm.model_name", "gen_ai.response.model", "ai.model.id",
    "langfuse.observation.model.name"]
    .map((key) => a[key])
    .filter((model) => typeof model === "string" && model);
  if (!found.length || found.some((model) => namedIn(name, model))) return null;
  return found[0];
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

const TRACEBACK = "Traceback (most recent call last):";

/** A span's status message as shown: "Type: " and nothing after it (an exception raised
 * without a message, such as a TimeoutError()) is the type alone; a Python traceback in
 * it (OpenInference's LangChain spans put one after the error) left out, or, when it is
 * all there is, its last line (the error). "" when it has none. */
export function statusMessage(n) {
  if (!n || !n.status_message) return "";
  let text = String(n.status_message);
  const at = text.indexOf(TRACEBACK);
  if (at >= 0 && text.slice(0, at).trim()) text = text.slice(0, at);
  else if (at >= 0) text = text.split("\n").filter((l) => l.trim()).pop() ?? "";
  // a JavaScript stack's first frame: "at name (file:line:col)" or "at file:line:col"
  const frame = text.search(/\n[ \t]+at (?:[^\n]* \([^\n]*:\d+(?::\d+)?\)|\S+:\d+(?::\d+)?)[ \t]*(?:\n|$)/);
  if (frame > 0) {
    // left out (OpenInference's LangChain.js: "message\n\nError: message\n    at …"),
    // and its "Error: message" line when it repeats the message above it
    const lines = text.slice(0, frame).split("\n");
    const first = lines.find((l) => l.trim())?.trim() ?? "";
    const typed = /^[A-Za-z_$][\w$.]*: (.*)$/.exec(lines.at(-1).trim());
    if (lines.length > 1 && typed !== null && typed[1] === first) lines.pop();
    text = lines.join("\n");
  }
  return text.trim().replace(/:\s*$/, "");
}

/** What a failed span without a status message says of its error in its attributes:
 * "api_error (HTTP 500)" (`error.type`, `http.response.status_code`, as the Anthropic
 * SDK's own spans say it); "" when it says nothing. */
export function errorTypeText(n) {
  if (!n || n.status !== "ERROR") return "";
  const a = n.attributes || {};
  const type = typeof a["error.type"] === "string" ? a["error.type"] : "";
  const code = Number.isInteger(a["http.response.status_code"]) ? `HTTP ${a["http.response.status_code"]}` : "";
  return type && code ? `${type} (${code})` : type || code;
}

/** The first line of `text` that is not blank, at most `max` characters (cut with "…");
 * a first line that ends with ":" goes on with the next one ("AgentGenerationError:
 * Error while generating output:" says nothing without the cause after it). */
export function firstLine(text, max = 120) {
  const lines = String(text).split("\n").map((l) => l.trim()).filter(Boolean);
  let first = lines.length > 1 && lines[0].endsWith(":") ? `${lines[0]} ${lines[1]}` : lines[0] ?? "";
  // a message that is JSON written over several lines ("[", "{" first): all of it, on one
  if (/^[[{(]+$/.test(first)) first = lines.join(" ");
  const line = [...first];
  return line.length > max ? `${line.slice(0, max - 1).join("")}…` : line.join("");
}

/** The tool a tool span called, when its name does not say it (smolagents' `SimpleTool`,
 * LlamaIndex's `FunctionTool.acall`, the Vercel AI SDK's `ai.toolCall`): OpenTelemetry's
 * `gen_ai.tool.name`, OpenInference's `tool.name` or the Vercel AI SDK's
 * `ai.toolCall.name`; null when there is none or the span's name holds it. */
export function toolName(n) {
  if (!n || n.kind !== "tool") return null;
  const a = n.attributes || {};
  for (const key of ["gen_ai.tool.name", "tool.name", "ai.toolCall.name"]) {
    const name = a[key];
    if (typeof name === "string" && name) return namedIn(String(n.name ?? ""), name) ? null : name;
  }
  return null;
}
