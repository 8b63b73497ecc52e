// Decisions, branches, monitors and the node detail panel, rendered from a run's state
// (see app.js: run.nodes, run.rest, run.detail). `select(spanId)` shows a node.

import { config, jaegerHref } from "./api.js";
import {
  $, bdi, betterState, displayName, durationText, fmtDuration, fmtTime, h, kindBadge, replace,
  errorTypeText, modelCalls, modelFacts, shownName, stateBadge, statusMessage, toolName, usageOf, valueView,
} from "./util.js";

/** An option's name as the graph gives it: text as it is, other values (a bool or a
 * number from another SDK) as their JSON text. */
const optionText = (x) => (typeof x === "string" ? x : JSON.stringify(x));

/** The names a decision node offers, as text. */
function offeredBy(n) {
  const raw = n.attributes["spangraph.decision.options"];
  return Array.isArray(raw) ? [...new Set(raw.filter((x) => x != null).map(optionText))] : [];
}

// how far up from an option's parent its decision is looked for
const OWNER_HOPS = 64;

/** The run's decision nodes (each with the names it offers), and the option nodes of
 * each decision: an option belongs to the nearest decision above it that offers its name
 * (an outer decision's option may be explored inside an inner decision), else to its
 * parent. One pass over the nodes, so the panels cost time in proportion to the run. */
function gatherDecisions(run) {
  const found = [];
  const offered = new Map(); // decision span_id -> Set of offered names
  const options = [];
  for (const n of run.nodes.values()) {
    if (n.kind === "decision") {
      found.push(n);
      offered.set(n.span_id, new Set(offeredBy(n)));
    } else if (n.kind === "option" && n.parent_span_id) options.push(n);
  }
  const optionsOf = new Map(); // decision span_id -> its option nodes
  for (const o of options) {
    let owner = o.parent_span_id;
    const seen = new Set();
    for (let id = owner, hops = 0; id && hops < OWNER_HOPS && !seen.has(id); hops++) {
      seen.add(id);
      if (offered.get(id)?.has(o.name)) {
        owner = id;
        break;
      }
      id = run.nodes.get(id)?.parent_span_id;
    }
    const list = optionsOf.get(owner);
    if (list) list.push(o);
    else optionsOf.set(owner, [o]);
  }
  return { found, optionsOf };
}

function decisionsView(run) {
  const byId = new Map(run.rest.decisions.map((d) => [d.span_id, {
    ...d, options: d.options.map((o) => ({ ...o })),
  }]));
  const { found, optionsOf } = gatherDecisions(run);
  for (const n of found) {
    const offered = offeredBy(n);
    const isOffered = new Set(offered);
    // an option child whose name this decision does not offer is another decision's (an
    // outer decision's option explored inside this one)
    const children = (optionsOf.get(n.span_id) || []).filter((c) => !offered.length || isOffered.has(c.name));
    const childNamed = new Map();
    for (const c of children) {
      const had = childNamed.get(c.name);
      if (!had || (had.state === "unexplored" && c.state !== "unexplored")) childNamed.set(c.name, c);
    }
    const names = [...new Set([...offered, ...children.map((c) => c.name)])];
    const live = {
      span_id: n.span_id, name: n.name, state: n.state, start_ns: n.start_ns,
      chosen: n.attributes["spangraph.decision.chosen"] == null ? null : optionText(n.attributes["spangraph.decision.chosen"]),
      reason: n.attributes["spangraph.decision.reason"] ?? null,
      score: n.attributes["spangraph.decision.score"] ?? null,
      options: names.map((name) => {
        const c = childNamed.get(name);
        return { name, state: c ? c.state : null, span_id: c ? c.span_id : null, explored: Boolean(c) && c.state !== "unexplored" };
      }),
    };
    const d = byId.get(n.span_id);
    if (!d) {
      byId.set(n.span_id, live);
      continue;
    }
    d.state = betterState(d.state, live.state);
    d.chosen ??= live.chosen;
    d.reason ??= live.reason;
    d.score ??= live.score;
    const optionNamed = new Map();
    for (const o of d.options) if (!optionNamed.has(o.name)) optionNamed.set(o.name, o);
    for (const o of live.options) {
      const m = optionNamed.get(o.name);
      if (!m) {
        d.options.push(o);
        optionNamed.set(o.name, o);
      } else {
        m.explored ||= o.explored;
        m.state = betterState(m.state, o.state);
        m.span_id ??= o.span_id;
      }
    }
  }
  const out = [...byId.values()];
  for (const d of out) {
    // a LangGraph route that sent the run on to several nodes at once: each is chosen
    const routed = d.chosen == null ? run.nodes.get(d.span_id)?.attributes["langgraph.destinations"] : null;
    const several = new Set(Array.isArray(routed) ? routed.map(optionText) : []);
    for (const o of d.options) o.chosen = d.chosen != null ? o.name === d.chosen : several.has(o.name);
  }
  return out.sort((a, b) => (a.start_ns ?? Infinity) - (b.start_ns ?? Infinity));
}

function branchesView(run) {
  const byId = new Map(run.rest.branches.map((b) => [b.span_id, { ...b }]));
  const branchNodes = [];
  // branch_id -> { nodes, failed, tokens } (tokens: what its model calls reported, each
  // call once, as the run header counts them)
  const counts = new Map();
  for (const s of run.nodes.values()) {
    if (s.kind === "branch") branchNodes.push(s);
    if (!s.branch_id || s.state === "unexplored") continue;
    let c = counts.get(s.branch_id);
    if (!c) counts.set(s.branch_id, (c = { nodes: 0, failed: 0, tokens: 0 }));
    c.nodes += 1;
    if (s.state === "failed") c.failed += 1;
  }
  for (const s of modelCalls(run.nodes.values())) {
    const c = s.branch_id && counts.get(s.branch_id);
    if (!c) continue;
    const { input, output } = usageOf(s.attributes);
    c.tokens += (input ?? 0) + (output ?? 0);
  }
  for (const n of branchNodes) {
    const count = (n.branch_id && counts.get(n.branch_id)) || { nodes: 0, failed: 0, tokens: 0 };
    const live = {
      span_id: n.span_id, name: n.name, branch_id: n.branch_id, state: n.state, start_ns: n.start_ns,
      duration_ms: n.duration_ms, nodes: count.nodes, failed: count.failed, tokens: count.tokens,
    };
    const b = byId.get(n.span_id);
    if (!b) byId.set(n.span_id, live);
    else {
      b.state = betterState(b.state, live.state);
      b.duration_ms ??= live.duration_ms;
      b.nodes = Math.max(b.nodes ?? 0, live.nodes);
      b.failed = Math.max(b.failed ?? 0, live.failed);
      b.tokens = live.tokens;
    }
  }
  return [...byId.values()].sort((a, b) => (a.start_ns ?? Infinity) - (b.start_ns ?? Infinity));
}

function nodeLink(run, select, spanId, text, extraClass = "") {
  if (!spanId || !run.nodes.has(spanId)) return h("span", { class: extraClass, text });
  return h("button", {
    type: "button", class: `link ${extraClass}`, on: { click: () => select(spanId) },
    "aria-label": `Show ${text} in the tree`,
  }, text);
}

export function renderInsights(run, select) {
  const decisions = decisionsView(run);
  const branches = branchesView(run);
  const monitors = run.rest.monitors;
  const key = JSON.stringify([decisions, branches, monitors, run.nodes.size]);
  if (key === run.insightsKey) return;
  run.insightsKey = key;

  const dBox = $("decisions");
  if (!decisions.length) dBox.replaceChildren(h("p", { class: "hint", text: "none" }));
  else replace(dBox, decisions.map((d) => h("div", { class: "decision", dataset: { spanId: d.span_id, name: d.name } },
    h("div", { class: "decision-head" }, nodeLink(run, select, d.span_id, d.name, "decision-name"), stateBadge(d.state)),
    h("ul", { class: "options", "aria-label": `Options of ${d.name}` }, d.options.map((o) => {
      const status = o.chosen ? "chosen" : o.explored ? "explored" : "not explored";
      return h("li", {
        class: `option${o.chosen ? " chosen" : ""}${o.explored ? "" : " unexplored"}`,
        dataset: { option: o.name, chosen: String(o.chosen), explored: String(o.explored) },
        "aria-label": `${o.name}: ${status}${o.state && o.explored ? `, ${o.state}` : ""}`,
      },
      h("span", { class: "mark", "aria-hidden": "true", text: o.chosen ? "✔" : o.explored ? "•" : "○" }),
      nodeLink(run, select, o.span_id, o.name, "option-name"),
      h("span", { class: "option-status", text: o.chosen ? "chosen" : o.explored ? (o.state || "explored") : "not explored" }));
    })),
    d.reason != null || d.score != null
      ? h("p", { class: "reason" }, d.reason != null ? ["reason: ", bdi(d.reason)] : "",
        d.score != null ? [d.reason != null ? " · " : "", "score ", bdi(d.score)] : "")
      : null)));

  const bList = $("branches");
  if (!branches.length) bList.replaceChildren(h("li", { class: "hint", text: "none" }));
  else replace(bList, branches.map((b) => h("li", { class: "branch", dataset: { name: b.name || "" } },
    nodeLink(run, select, b.span_id, b.name || b.branch_id, "branch-name"), stateBadge(b.state),
    h("span", { class: "counts", text: `${b.nodes} node${b.nodes === 1 ? "" : "s"}${b.failed ? `, ${b.failed} failed` : ""}${b.tokens ? `, ${b.tokens.toLocaleString()} tokens` : ""}` }),
    h("span", { class: "dur", text: fmtDuration(b.duration_ms) }))));

  const branchName = new Map(branches.map((b) => [b.branch_id, b.name]));
  const mList = $("monitors");
  if (!monitors.length) mList.replaceChildren(h("li", { class: "hint", text: "none" }));
  else replace(mList, monitors.map((m) => {
    const target = m.target || m.target_span_id;
    const from = branchName.get(m.monitor_branch_id);
    const to = branchName.get(m.target_branch_id);
    return h("li", {
      class: "monitor", dataset: { monitor: m.monitor || "", target },
      "aria-label": `${m.monitor} watches ${m.target_kind || "span"} ${target}`,
    },
    nodeLink(run, select, m.monitor_span_id, m.monitor || m.monitor_span_id, "monitor-name"),
    h("span", { class: "arrow", "aria-hidden": "true", text: " → " }),
    nodeLink(run, select, m.target_span_id, target, "monitor-target"),
    m.target_kind ? kindBadge(m.target_kind) : null,
    from || to ? h("span", { class: "hint" }, " (", bdi(from || "?"), " watches ", bdi(to || "?"), ")") : null);
  }));
}


export function errorMessage(n, events) {
  const status = statusMessage(n);
  if (status) return status;
  // the last exception recorded, the one it ended with (as `query tree` says it: its
  // type and message where they are text), else an event's `error.message`
  const said = (...texts) => texts.filter((t) => typeof t === "string" && t.trim()).join(": ");
  const reversed = [...events].reverse();
  for (const e of reversed) {
    const a = e.attributes || {};
    const text = e.name === "exception" ? said(a["exception.type"], a["exception.message"]) : "";
    if (text) return text;
  }
  for (const e of reversed) {
    const a = e.attributes || {};
    if (said(a["error.message"])) return said(a["error.type"], a["error.message"]);
  }
  return errorTypeText(n) || null;
}

/** OpenTelemetry's status code of a span, with a plain word for UNSET (the code never
 * set it: its state says how it ended). */
function statusText(status) {
  return status === "UNSET" ? "not set (UNSET)" : status;
}

/** An attribute's key, which may wrap after each dot (not inside a word). */
function keyView(key) {
  return String(key).split(/(?<=\.)/).flatMap((part, i) => (i ? [h("wbr"), part] : [part]));
}

/** Texts joined by " · ", each isolated (see bdi); null when there are none. */
function joined(texts) {
  return texts.length ? texts.flatMap((t, i) => (i ? [" · ", bdi(t)] : [bdi(t)])) : null;
}

/** The facts an option never explored has: it was never a span (no start, no ids of its
 * own in any trace, no service ran it), only an option its decision offered. */
const NEVER_RAN = new Set(["Parent", "Branch"]);

/** When a span started: its time, and how far into the run ("… (+10.0 ms into the run)"). */
function startedText(n, into) {
  const at = fmtTime(n.start_ns);
  return at && into !== null && into > 0 ? `${at} (+${fmtDuration(into)} into the run)` : at;
}

export function renderDetail(run, select) {
  const box = $("detail");
  const n = run && run.selected ? run.nodes.get(run.selected) : null;
  if (!n) {
    delete box.dataset.key;
    $("detail-title").textContent = "Node";
    $("detail-title").removeAttribute("title");
    box.replaceChildren(h("p", { class: "hint", text: "Click a node in the tree to see its attributes, events and duration." }));
    return;
  }
  const stored = run.detail && run.detail.span_id === n.span_id ? run.detail.events || [] : [];
  const events = stored.length ? stored : n.liveEvents;
  // how far into the run it started (the start of the run's bars' track, see app.js)
  const into = typeof n.start_ns === "number" && run.lo != null && run.epoch != null
    ? n.start_ns / 1e6 - run.epoch - run.lo : null;
  const key = JSON.stringify([n, events, config.jaeger_url, into]);
  if (key === box.dataset.key) return;
  box.dataset.key = key;
  const t0 = n.start_ns;
  const error = n.state === "failed" || n.status === "ERROR" ? errorMessage(n, events) : null;
  const href = jaegerHref(n);
  const name = shownName(n); // an empty name reads "(unnamed)", as in the tree
  $("detail-title").textContent = name;
  $("detail-title").title = name; // the whole name, where it is cut
  const facts = [
    ["Duration", durationText(n) || "—"],
    ["Started", startedText(n, into)],
    ["Ended", fmtTime(n.end_ns)],
    ["Status", statusText(n.status)],
    ...(n.kind === "llm" ? modelFacts(n, events) : []),
    ["Tool", toolName(n)],
    ["Span id", n.span_id],
    ["Parent", n.parent_span_id],
    ["Trace id", n.trace_id],
    ["Branch", n.branch_id],
    ["Service", joined([n.service, n.env].filter(Boolean))],
    // a workflow started inside this run: a run of its own, shown here as a leaf
    ["Run", n.workflow_id && n.workflow_id !== run.id ? n.workflow_id : null],
  ].filter(([k, v]) => v && (n.state !== "unexplored" || NEVER_RAN.has(k)));
  const attrs = Object.entries(n.attributes).sort(([a], [b]) => a.localeCompare(b));
  replace(box,
    h("div", { class: "detail-badges" }, kindBadge(n.kind), stateBadge(n.state),
      href ? h("a", { class: "jaeger button-like", href, target: "_blank", rel: "noopener", "aria-label": `Open ${name} in Jaeger` }, "Open in Jaeger ↗") : null),
    error ? h("p", { class: "error-box", role: "note" }, h("strong", { text: "Error: " }), bdi(error)) : null,
    h("dl", { class: "facts" }, facts.map(([k, v]) => [
      h("dt", { text: k }),
      h("dd", { class: k.endsWith("id") ? "mono" : "", dataset: { fact: k } },
        k === "Parent" ? nodeLink(run, select, v, run.nodes.get(v)?.name || v, "mono")
          : k === "Run" ? h("a", { class: "mono", href: `#run=${encodeURIComponent(v)}`, title: "Open this run" }, v) : v),
    ])),
    h("h3", { text: `Attributes (${attrs.length})` }),
    attrs.length
      ? h("table", { class: "attrs" }, h("caption", { class: "sr-only", text: `Attributes of ${name}` }),
        h("colgroup", {}, h("col", { class: "key" }), h("col")),
        h("tbody", {}, attrs.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, keyView(k)), h("td", {}, valueView(v))))))
      : h("p", { class: "hint", text: "none" }),
    h("h3", { text: `Events (${events.length})` }),
    events.length
      ? h("ol", { class: "events" }, events.map((e) => h("li", { class: "event", dataset: { name: e.name } },
        h("div", { class: "event-head" }, h("span", { class: "event-name", text: e.name }),
          h("span", { class: "hint", text: typeof e.time_ns === "number" && typeof t0 === "number" ? `+${fmtDuration((e.time_ns - t0) / 1e6)}` : "" })),
        Object.keys(e.attributes || {}).length
          ? h("dl", { class: "event-attrs" }, Object.entries(e.attributes).map(([k, v]) => [h("dt", {}, keyView(k)), h("dd", {}, valueView(v))]))
          : null)))
      : h("p", { class: "hint", text: n.state === "running" ? "none yet" : "none" }),
    n.tokens ? [h("h3", { text: "Streamed tokens (live only)" }), h("pre", { class: "tokens", text: n.tokens })] : null,
  );
}
