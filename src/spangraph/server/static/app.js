// spangraph web UI: runs, a run's tree updated live over the WebSocket (or by polling
// while the stream is unavailable), node detail, decisions, branches and monitors.
// Plain ES module, no dependencies. Every value from the API goes into the page as
// text (textContent), never as HTML. Modules: util.js (DOM and formatting), api.js (API and
// token), views.js (decisions, branches, monitors, node detail); this one holds the state.

import { api, askToken, config, currentToken, jaegerHref, parseJson } from "./api.js";
import {
  $, TERMINAL, bdi, betterState, classPart, displayName, durationText, firstLine, fmtDuration,
  errorTypeText, fmtTime, h, modelCalls, shownName, stateBadge, statusMessage, usageOf,
} from "./util.js";
import { renderDetail as renderDetailView, renderInsights as renderInsightsView } from "./views.js";

const RUNS_EVERY_MS = 5000;
const POLL_EVERY_MS = 2000;
const PROMOTED = new Set([
  "spangraph.kind", "spangraph.workflow.id", "spangraph.execution.id",
  "spangraph.branch.id", "spangraph.project.id", "spangraph.state",
]);

// -- runs list -------------------------------------------------------------------------------

const RUNS_LIMIT = 200;
const knownNames = new Set(); // suggestions for the name filter (names seen so far)
const runItems = new Map(); // the run's workflow span_id (else its workflow_id) -> <li>
let runsTimer = null;
let runsLoading = false;
let runsAgain = false; // asked again (the filters changed?) while a list was loading

/** The runs that match the filters, newest first. The service does the filtering
 * (`name_contains`: a part of the name, in any case), so every run can be found, not
 * only those among the newest RUNS_LIMIT. */
async function loadRuns() {
  if (runsLoading) {
    runsAgain = true;
    return;
  }
  runsLoading = true;
  try {
    do {
      runsAgain = false;
      await loadRunsOnce();
    } while (runsAgain);
  } finally {
    runsLoading = false;
  }
}

async function loadRunsOnce() {
  const params = new URLSearchParams({ limit: String(RUNS_LIMIT) });
  const state = $("filter-state").value;
  const name = $("filter-name").value.trim();
  if (state) params.set("state", state);
  if (name) params.set("name_contains", name);
  try {
    const runs = await api(`/api/workflows?${params}`);
    if (runsAgain) return; // asked again meanwhile: the filters may have changed, load anew
    for (const r of runs) if (typeof r.name === "string" && r.name) knownNames.add(r.name);
    const list = $("run-names");
    if (list.children.length !== knownNames.size) {
      list.replaceChildren(...[...knownNames].sort().map((n) => h("option", { value: n })));
    }
    renderRuns(runs);
    const status = $("runs-status"); // a live region: its text changes only with the count
    status.textContent = runs.length
      ? `${runs.length} run${runs.length === 1 ? "" : "s"}${runs.length >= RUNS_LIMIT ? ` (the newest ${RUNS_LIMIT})` : ""}`
      : "No runs match these filters.";
    status.title = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (!runsAgain) $("runs-status").textContent = `Could not load runs: ${err.message}`;
  }
}

function runId(r) {
  return r.workflow_id || r.trace_id || r.span_id;
}

/** A list entry's key: its workflow span. A workflow_id given twice (the SDK takes a
 * user-given id as it is, e.g. a job's id on each attempt) is two runs in the list, each
 * with its own name and state; either opens the workflow_id's page. */
function runKey(r) {
  return r.span_id ? `${runId(r)}\n${r.span_id}` : runId(r);
}

function renderRuns(runs) {
  const ul = $("runs");
  const keep = new Set();
  let previous = null;
  for (const r of runs) {
    const id = runId(r);
    const key = runKey(r);
    if (keep.has(key)) continue;
    keep.add(key);
    let li = runItems.get(key);
    if (!li) {
      li = h("li", { dataset: { workflowId: id } },
        h("button", { type: "button", class: "run-item", on: { click: () => openRunFromList(id) } }));
      runItems.set(key, li);
    }
    const button = li.firstElementChild;
    // a failed run: the first line of its error, under it (the whole message in its title)
    const error = r.state === "failed" ? statusMessage(r) : "";
    const label = `${displayName(r.name)}, ${r.state || "unknown"}${error ? `: ${firstLine(error)}` : ""}`;
    button.setAttribute("aria-label", label);
    li.dataset.state = r.state || "unknown";
    li.dataset.name = r.name || "";
    button.replaceChildren(
      h("span", { class: "run-line" },
        h("span", { class: "run-name", title: displayName(r.name), text: displayName(r.name) }), stateBadge(r.state)),
      h("span", { class: "run-sub" },
        h("span", { text: fmtTime(r.start_ns) }),
        h("span", { text: fmtDuration(r.duration_ms) }),
        // an id's end: a UUIDv7 starts with its time, the same for runs started together
        h("span", { class: "mono", title: id, text: id.length > 9 ? `…${id.slice(-8)}` : id })),
      ...(error ? [h("span", { class: "run-error", title: error, text: firstLine(error) })] : []),
    );
    if (current && current.id === id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
    const want = previous ? previous.nextSibling : ul.firstChild;
    if (want !== li) ul.insertBefore(li, want);
    previous = li;
  }
  for (const [key, li] of runItems) {
    if (!keep.has(key)) {
      li.remove();
      runItems.delete(key);
    }
  }
  followReusedId(runs);
}

function scheduleRuns() {
  clearInterval(runsTimer);
  runsTimer = null;
  if ($("auto-refresh").checked) {
    runsTimer = setInterval(() => { if (!document.hidden) loadRuns(); }, RUNS_EVERY_MS);
  }
}

function openRunFromList(id) {
  if (current && current.id === id) {
    // the open run ended, and the id is used again by a run under way: open that one
    if (current.finished && !current.closed) openRun(id, current.selected);
    return;
  }
  location.hash = `run=${encodeURIComponent(id)}`;
}

/** The open run ended, and the list has a run under way with its id (a caller's own id,
 * such as a job's, used again): open it again, once for each such run, so that it is
 * watched live rather than left at the one that ended. */
function followReusedId(runs) {
  const run = current;
  if (!run || run.closed || !run.finished) return;
  const again = runs.find((r) => runId(r) === run.id && r.state === "running");
  if (!again || run.reopenedFor === runKey(again)) return;
  const reopened = runKey(again);
  openRun(run.id, run.selected).then(() => {
    if (current && current.id === run.id) current.reopenedFor = reopened;
  });
}

// -- the open run ----------------------------------------------------------------------------

/** The run on screen: its nodes by span_id, the stream's last seq, REST insights. */
let current = null;

function newRun(id) {
  return {
    id,
    nodes: new Map(),
    items: new Map(), // span_id -> <li>
    placedAt: new Map(), // <li> -> the start it was placed by (see placeNode)
    up: new Map(), // <li> -> the item it is placed under (null: at the top)
    kids: new Map(), // <li> (null: the top) -> the items placed under it, in order
    waiting: new Map(), // parent span_id -> span_ids of items at the top waiting for it
    waitingOn: new Map(), // span_id -> the parent span_id it waits for (see markWaiting)
    lastSeq: 0,
    ws: null,
    wsFailures: 0,
    reconnectTimer: null,
    pollTimer: null, // polling while the stream is unavailable
    slowTimer: null, // an occasional graph read while live
    reconcileTimer: null,
    detailTimer: null,
    refreshing: null, // the graph read under way (a promise), see refreshRun
    refreshAgain: false,
    closed: false,
    finished: false,
    rest: { decisions: [], branches: [], monitors: [] },
    execution: null, // the runs of the run's execution, oldest first (see readExecution)
    executionRead: 0, // when they were last asked for (performance.now())
    insightsKey: "",
    selected: null,
    detail: null, // REST answer for the selected node
    dirty: new Set(),
    touched: new Set(), // items (null: the top) whose children came or went (see numberItems)
    attempts: new Map(), // a retried step's attempts: key (see trackAttempt) -> its group
    attemptOf: new Map(), // span_id -> [key, attempt number] it is counted under
    relabel: new Set(), // span_ids whose row's attempt or "retried" may have changed
    tabStop: null, // the tree's one item in the Tab order (see setTabStop)
    epoch: null, // ms: the first start the page saw, the zero of the rows' bars (drawBar)
    lo: null, // ms from the epoch: the earliest start and latest end of its spans
    hi: null,
    liveHi: null, // ms from the epoch: now, while a span runs (see drawBar)
    shownExtent: [null, null], // the extent the tree's bars are drawn on
    frame: 0,
  };
}

function setTransport(kind, text) {
  const el = $("conn");
  el.dataset.transport = kind;
  el.textContent = text;
}

function closeRun() {
  if (!current) return;
  const run = current;
  run.closed = true;
  clearTimeout(run.reconnectTimer);
  clearTimeout(run.reconcileTimer);
  clearTimeout(run.detailTimer);
  clearInterval(run.pollTimer);
  clearInterval(run.slowTimer);
  clearTimeout(run.childTimer);
  if (run.ws) {
    const ws = run.ws;
    run.ws = null;
    ws.close();
  }
  current = null;
}

const NO_RUN_META = "Pick a run on the left. A running run updates live.";

/** Back to the start page: no run open, nothing of the last one left on screen. */
function showNoRun() {
  closeRun();
  for (const li of runItems.values()) li.firstElementChild.removeAttribute("aria-current");
  const title = $("run-title");
  title.textContent = "No run selected";
  title.removeAttribute("title");
  $("run-state").replaceChildren();
  $("run-meta").textContent = NO_RUN_META;
  $("run-execution").hidden = true;
  $("run-jaeger").hidden = true;
  clearTree();
  $("tree-empty").hidden = true;
  $("decisions").replaceChildren(h("p", { class: "hint", text: "none" }));
  $("branches").replaceChildren(h("li", { class: "hint", text: "none" }));
  $("monitors").replaceChildren(h("li", { class: "hint", text: "none" }));
  renderDetail();
  setTransport("idle", "no run open");
}

/** Empty the tree, and its track's extent with it (see showExtent). */
function clearTree() {
  const tree = $("tree-root");
  tree.replaceChildren();
  tree.style.removeProperty("--lo");
  tree.style.removeProperty("--span");
}

async function openRun(id, nodeId) {
  closeRun();
  const run = (current = newRun(id));
  run.linkedNode = nodeId ?? null; // the node the address named (kept if the id leads on)
  for (const li of runItems.values()) {
    const b = li.firstElementChild;
    if (li.dataset.workflowId === id) b.setAttribute("aria-current", "true");
    else b.removeAttribute("aria-current");
  }
  clearTree();
  $("run-title").textContent = "Loading…";
  $("run-title").removeAttribute("title");
  $("run-state").replaceChildren();
  $("run-meta").replaceChildren(bdi(id));
  $("run-execution").hidden = true;
  $("run-jaeger").hidden = true;
  $("tree-empty").hidden = true;
  renderDetail();
  setTransport("connecting", "loading…");
  await refreshRun(run);
  if (run.closed) return;
  if (nodeId && run.nodes.has(nodeId)) {
    // the rows are drawn at the next frame: draw them now, so that the node linked to
    // is scrolled into sight (not only selected, out of sight down a long run)
    if (run.frame) {
      cancelAnimationFrame(run.frame);
      run.frame = 0;
      render(run);
    }
    selectNode(nodeId, { focus: false });
  }
  if (runEnded(run)) {
    run.finished = true;
    setTransport("done", "run finished");
  } else if (config.live) {
    connectLive(run);
  } else {
    startPolling(run);
  }
}

/** Fetch the tree and the insights and merge them in (never undoing a live end). */
/** Read the run from the graph. One read at a time: asked again while one is under way
 * (a poll, a reconcile, a slow service), it reads once more when that one ends, so
 * requests never pile up and an older answer never lands after a newer one. */
function refreshRun(run) {
  if (run.refreshing) {
    run.refreshAgain = true;
    return run.refreshing;
  }
  run.refreshing = (async () => {
    try {
      do {
        run.refreshAgain = false;
        await refreshRunOnce(run);
      } while (run.refreshAgain && !run.closed);
    } finally {
      run.refreshing = null;
    }
  })();
  return run.refreshing;
}

async function refreshRunOnce(run) {
  const ask = (path) => api(`/api/workflows/${encodeURIComponent(run.id)}/${path}`);
  const [tree, decisions, branches, monitors] = await Promise.allSettled([
    ask("tree"), ask("decisions"), ask("branches"), ask("monitors"),
  ]);
  if (run.closed) return;
  if (tree.status === "fulfilled") {
    // parents before children, without recursion (a run may be thousands of levels deep)
    const todo = [...tree.value].reverse();
    while (todo.length) {
      const n = todo.pop();
      mergeNode(run, n);
      const kids = Array.isArray(n.children) ? n.children : [];
      for (let i = kids.length - 1; i >= 0; i--) todo.push(kids[i]);
    }
    // a hint from an earlier read ("waiting", "could not load") is out of date now
    if (run.nodes.size) $("tree-empty").hidden = true;
  } else if (tree.reason?.status === 404 && tree.reason.run && tree.reason.run !== run.id) {
    // the id of a span, trace or branch of a run, not a run's: open that run (at the
    // span). A run traced over OTLP goes by its trace id until its top span arrives.
    const node = tree.reason.idKind === "span" ? run.id.toLowerCase() : run.linkedNode;
    const hash = `run=${encodeURIComponent(tree.reason.run)}` +
      (node ? `&node=${encodeURIComponent(node)}` : "");
    history.replaceState(null, "", `#${hash}`);
    openRun(tree.reason.run, node);
    return;
  } else if (tree.reason?.status === 404) {
    if (!run.nodes.size) {
      showTreeHint(
        "Waiting for the run's first spans… (none has this run id yet: a mistyped id " +
          "waits here too)",
      );
    }
  } else if (tree.reason?.status === 503) {
    // the service reads a few runs whole at once: this one's turn comes
    if (!run.nodes.size) showTreeHint("The service is busy reading other runs; trying again…");
    setTimeout(() => {
      if (!run.closed) refreshRun(run);
    }, BUSY_RETRY_MS);
  } else {
    showTreeHint(`Could not load the run: ${tree.reason?.message}`);
  }
  if (decisions.status === "fulfilled") run.rest.decisions = decisions.value;
  if (branches.status === "fulfilled") run.rest.branches = branches.value;
  if (monitors.status === "fulfilled") run.rest.monitors = monitors.value;
  scheduleRender(run);
  if (run.selected) loadDetail(run, run.selected);
  followChildRuns(run);
  readExecution(run);
}

const EXECUTION_EVERY_MS = 15000;
const BUSY_RETRY_MS = 2000; // the service's Retry-After for a run read whole

/** The runs of the open run's execution (its `execution_id`, when it is not the run's
 * own id: a run resumed after a crash or a pause, a LangGraph thread's turns), read
 * with the run and at most every 15 s while it is read again. */
async function readExecution(run) {
  const root = rootNode(run);
  const executionId = root?.execution_id;
  if (!executionId || executionId === run.id) return;
  const now = performance.now();
  // at most every 15 s, whether the last read answered or not (or is still under way)
  if (run.executionRead && now - run.executionRead < EXECUTION_EVERY_MS) return;
  run.executionRead = now;
  try {
    const runs = await api(`/api/workflows?execution_id=${encodeURIComponent(executionId)}&limit=50`);
    if (run.closed) return;
    run.execution = { id: executionId, runs: [...runs].reverse() };
    scheduleRender(run);
  } catch (err) {
    console.warn("spangraph: the runs of the execution", err);
  }
}

/** "Execution <id>: plan, completed (waiting) → this run → …", each other run a link
 * (shown when the execution has more than this run). */
function renderExecution(run) {
  const nav = $("run-execution");
  const runs = run.execution?.runs ?? [];
  if (runs.length < 2) {
    nav.hidden = true;
    return;
  }
  const items = runs.map((r, i) => {
    const id = runId(r);
    // stopped at an interrupt or a breakpoint: waiting, unless a later run went on
    const stopped = r.attributes?.["langgraph.interrupted"] === true;
    const waiting = stopped ? (i === runs.length - 1 ? " (waiting)" : " (paused)") : "";
    const text = `${displayName(r.name)}, ${r.state || "unknown"}${waiting}`;
    if (id === run.id) return h("strong", { "aria-current": "page", title: id, text: `this run: ${text}` });
    return h("a", { href: `#run=${encodeURIComponent(id)}`, title: id, text });
  });
  if (!runs.some((r) => runId(r) === run.id)) {
    // an older run than the newest 50 of its execution
    items.unshift(h("strong", { "aria-current": "page", title: run.id, text: "this run" }), "…");
  }
  nav.replaceChildren(
    `Execution `, bdi(run.execution.id), ` (${runs.length >= 50 ? "the newest 50 runs" : `${runs.length} runs`}): `,
    ...items.flatMap((el, i) => (i ? [" → ", el] : [el])),
  );
  nav.hidden = false;
}

/** A workflow started inside this run is a run of its own, shown here as a leaf: its
 * messages go to its own stream, not this one. While one runs, read it every 2 s until
 * it ends (else it showed "running" until the next read of the whole run). */
function followChildRuns(run) {
  if (run.closed || run.childTimer) return;
  const running = [...run.nodes.values()].filter((n) =>
    n.name !== null && n.workflow_id && n.workflow_id !== run.id && !TERMINAL.has(n.state));
  if (!running.length) return;
  run.childTimer = setTimeout(async () => {
    run.childTimer = null;
    if (run.closed) return;
    const read = await Promise.allSettled(
      running.map((n) => api(`/api/nodes/${encodeURIComponent(n.span_id)}`)));
    if (run.closed) return;
    for (const r of read) if (r.status === "fulfilled" && r.value) mergeNode(run, r.value);
    scheduleRender(run);
    followChildRuns(run);
  }, 2000);
}

function showTreeHint(text) {
  const p = $("tree-empty");
  p.textContent = text;
  p.hidden = false;
}

/** Whether a node is at the top of the run: no parent, or (a workflow span) a parent
 * outside the run. */
function isTop(run, n) {
  return !n.parent_span_id || (n.kind === "workflow" && !run.nodes.has(n.parent_span_id));
}

/** The run's top spans: its workflow spans at the top (several when a workflow_id was
 * used again), else, for spans sent without a workflow span (plain OTLP spans carrying
 * `spangraph.workflow.id`), the spans without a parent. */
function runRoots(run) {
  const workflows = [];
  const plain = [];
  for (const n of run.nodes.values()) {
    if (n.name === null || !isTop(run, n)) continue;
    (n.kind === "workflow" ? workflows : plain).push(n);
  }
  return workflows.length ? { roots: workflows, workflows: true } : { roots: plain, workflows: false };
}

/** The span the header shows: a running top span first; else the newest workflow span
 * (a workflow_id used again: its last run), or the earliest span without a parent; else
 * (the top spans not seen yet) the earliest span whose parent is unknown. */
function rootNode(run) {
  const { roots, workflows } = runRoots(run);
  const pool = roots.filter((n) => !TERMINAL.has(n.state));
  const from = pool.length ? pool : roots;
  const key = (n) => n.start_ns ?? (workflows ? -Infinity : Infinity);
  let best = null;
  for (const n of from) {
    if (!best || (workflows ? key(n) > key(best) : key(n) < key(best))) best = n;
  }
  if (best) return best;
  for (const n of run.nodes.values()) {
    if (n.name === null || !n.parent_span_id || run.nodes.has(n.parent_span_id)) continue;
    if (!best || (n.start_ns ?? Infinity) < (best.start_ns ?? Infinity)) best = n;
  }
  return best;
}

/** The state of a run whose top span has not arrived: running while any of its
 * top-most spans runs, else failed when one failed, else as they ended. */
function headlessState(run) {
  let state = null;
  for (const n of run.nodes.values()) {
    if (n.name === null || !n.parent_span_id || run.nodes.has(n.parent_span_id)) continue;
    if (n.state === "running") return "running";
    if (n.state === "failed") state = "failed";
    else if (state === null) state = n.state;
  }
  return state;
}

/** Whether the run is over: it has top spans and every one of them has ended. */
function runEnded(run) {
  const { roots } = runRoots(run);
  return roots.length > 0 && roots.every((n) => TERMINAL.has(n.state));
}

function emptyNode(spanId) {
  return {
    span_id: spanId, parent_span_id: null, trace_id: null, kind: null, name: null,
    state: null, status: null, status_message: null, start_ns: null, end_ns: null,
    duration_ms: null, branch_id: null, service: null, env: null, attributes: attributeMap(),
    jaeger_url: null, liveEvents: [], tokens: "",
  };
}

/** A map for span-derived keys: no prototype, so `__proto__`, `constructor` and the
 * like are keys as any other (on `{}`, setting `__proto__` changes the prototype). */
function attributeMap() {
  return Object.create(null);
}

/** Copy a span's attributes (an object from JSON) into `into`, key by key (`skip(key)`:
 * leave that one out). Whether any value was new. */
function copyAttributes(into, from, skip = null) {
  if (!from || typeof from !== "object" || Array.isArray(from)) return false;
  let changed = false;
  for (const [k, v] of Object.entries(from)) {
    if ((skip && skip(k)) || (k in into && sameValue(into[k], v))) continue;
    into[k] = v;
    changed = true;
  }
  return changed;
}

/** Whether two values from JSON are the same (objects and arrays: the same JSON text). */
function sameValue(a, b) {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  return JSON.stringify(a) === JSON.stringify(b);
}

const MERGED = ["parent_span_id", "trace_id", "kind", "name", "status", "status_message",
  "start_ns", "end_ns", "duration_ms", "branch_id", "service", "env", "jaeger_url",
  "workflow_id", "execution_id", "project_id"];

/** Merge a node from the REST API. It is rendered again only when something changed:
 * a graph read that brings nothing new (a poll, the slow read while live) costs no work
 * in the page beyond reading the answer. */
function mergeNode(run, src) {
  let n = run.nodes.get(src.span_id);
  let changed = false;
  if (!n) {
    n = emptyNode(src.span_id);
    run.nodes.set(src.span_id, n);
    changed = true;
  }
  for (const key of MERGED) {
    const v = src[key];
    if (v !== null && v !== undefined && n[key] !== v) {
      n[key] = v;
      changed = true;
    }
  }
  const state = betterState(n.state, src.state);
  if (state !== n.state) {
    n.state = state;
    changed = true;
  }
  if (copyAttributes(n.attributes, src.attributes)) changed = true;
  if (changed) run.dirty.add(n.span_id);
}

/** Apply one live message (see docs/live-events.md). */
function applyMessage(run, msg, flash) {
  if (!msg.span_id) return;
  let n = run.nodes.get(msg.span_id);
  if (!n) {
    n = emptyNode(msg.span_id);
    run.nodes.set(msg.span_id, n);
  }
  for (const key of ["parent_span_id", "trace_id", "kind", "name", "service", "env", "project_id"]) {
    if (msg[key] !== null && msg[key] !== undefined && n[key] == null) n[key] = msg[key];
  }
  // (own keys only: from JSON, so `__proto__` is a key here, as any other)
  const attrs = attributeMap();
  copyAttributes(attrs, msg.attributes);
  if (msg.type === "span.started" || msg.type === "span.ended") {
    if (attrs["spangraph.branch.id"] && !n.branch_id) n.branch_id = attrs["spangraph.branch.id"];
    copyAttributes(n.attributes, attrs, (k) => PROMOTED.has(k) || k === "state" || k === "duration_ms");
  }
  switch (msg.type) {
    case "span.started":
      if (n.start_ns == null) n.start_ns = msg.time_unix_nano ?? null;
      if (!n.state) n.state = "running";
      break;
    case "span.ended":
      n.state = attrs.state || n.state || "completed";
      if (typeof attrs.duration_ms === "number") n.duration_ms = attrs.duration_ms;
      if (n.end_ns == null) n.end_ns = msg.time_unix_nano ?? null;
      if (flash) n.flash = "ended";
      if (["decision", "branch", "monitor", "workflow"].includes(n.kind)) scheduleReconcile(run);
      if (isTop(run, n) && runEnded(run)) finishRun(run);
      if (run.selected === n.span_id) scheduleDetail(run);
      break;
    case "token":
      n.tokens += typeof attrs.text === "string" ? attrs.text : "";
      if (flash) n.flash = "token";
      break;
    default: // a lifecycle or custom event
      if (!n.state) n.state = "running";
      n.liveEvents.push({ name: msg.type, time_ns: msg.time_unix_nano, attributes: attrs, seq: msg.seq });
      if (flash) n.flash = msg.type;
  }
  run.dirty.add(n.span_id);
}

// -- live stream and polling -----------------------------------------------------------------

function connectLive(run) {
  if (run.closed || run.finished || run.ws) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // Resume after the last seq seen: ?since=n (rather than a first message {"since": n},
  // which the service only reads in the first moment after connecting).
  const query = new URLSearchParams({ since: String(run.lastSeq) });
  const token = currentToken();
  if (token) query.set("token", token);
  const url = `${scheme}//${location.host}/api/stream/workflows/${encodeURIComponent(run.id)}?${query}`;
  let ws;
  try {
    ws = new WebSocket(url);
  } catch {
    startPolling(run);
    return;
  }
  run.ws = ws;
  if (!run.pollTimer) setTransport("connecting", "connecting to the live stream…");
  ws.addEventListener("open", () => {
    if (run.ws !== ws) return;
    stopPolling(run);
    setTransport("live", "live");
    // Now and then, read the graph too (it holds what the stream does not carry).
    clearInterval(run.slowTimer);
    run.slowTimer = setInterval(() => {
      if (run.ws === ws && !run.closed && !run.finished) refreshRun(run).catch(() => {});
      else clearInterval(run.slowTimer);
    }, 15000);
  });
  ws.addEventListener("message", (ev) => {
    if (run.ws !== ws) return;
    let data;
    try { data = parseJson(ev.data); } catch { return; }
    run.wsFailures = 0;
    // A frame holds one message or a JSON array of several (what arrived together).
    for (const msg of Array.isArray(data) ? data : [data]) onLiveMessage(run, msg);
  });
  ws.addEventListener("close", (ev) => {
    if (run.ws !== ws) return;
    run.ws = null;
    if (run.closed || run.finished) return;
    run.wsFailures += 1;
    startPolling(run);
    // 4008: this page fell behind; 1001: the service restarts. Otherwise back off.
    const soon = ev.code === 4008 || ev.code === 1001;
    const delay = soon ? 500 : Math.min(30000, 1000 * 2 ** Math.min(run.wsFailures, 5));
    if (ev.reason) setTransport("polling", `polling every ${POLL_EVERY_MS / 1000} s (live stream: ${ev.reason})`);
    run.reconnectTimer = setTimeout(() => connectLive(run), delay);
  });
  // A server without the stream answers the handshake with an error: "close" follows.
}

function onLiveMessage(run, msg) {
  if (!msg || typeof msg !== "object") return;
  // The service's own messages carry no span: a span event may have any name, "error"
  // or "heartbeat" too (another program's), and is the span's.
  const control = msg.span_id === undefined;
  if (control && msg.type === "heartbeat") return;
  if (control && (msg.type === "subscribed" || msg.type === "resumed")) {
    // A since below the last seq seen: the run's numbering went back (Redis lost its
    // data). Messages from then on reuse those numbers: forget the higher ones, and
    // read the graph for what the stream no longer has.
    if (typeof msg.since === "number" && msg.since < run.lastSeq) {
      run.lastSeq = msg.since;
      scheduleReconcile(run);
    }
    if (msg.type === "resumed") setTransport("live", "live");
    return;
  }
  if (control && msg.type === "error") { // Redis went away, or a replay older than the stream keeps
    const why = msg.detail || msg.message || msg.error || "stream error";
    setTransport("error", `live stream: ${why}`);
    scheduleReconcile(run); // the graph has what the stream may have lost
    return;
  }
  if (msg.workflow_id && msg.workflow_id !== run.id) return;
  if ($("conn").dataset.transport === "error") setTransport("live", "live");
  if (typeof msg.seq === "number") {
    if (msg.seq <= run.lastSeq) return; // already seen (a resume overlaps)
    run.lastSeq = msg.seq;
  }
  const fresh = typeof msg.time_unix_nano !== "number" || Date.now() - msg.time_unix_nano / 1e6 < 10000;
  applyMessage(run, msg, fresh);
  $("tree-empty").hidden = true;
  scheduleRender(run);
}

function startPolling(run) {
  if (run.closed || run.finished || run.pollTimer) return;
  setTransport("polling", `polling every ${POLL_EVERY_MS / 1000} s (live stream unavailable)`);
  run.pollTimer = setInterval(async () => {
    if (run.closed) return;
    try {
      await refreshRun(run);
    } catch { /* shown by refreshRun */ }
    if (runEnded(run)) finishRun(run);
  }, POLL_EVERY_MS);
}

function stopPolling(run) {
  clearInterval(run.pollTimer);
  run.pollTimer = null;
}

function finishRun(run) {
  if (run.finished) return;
  run.finished = true;
  stopPolling(run);
  clearTimeout(run.reconnectTimer);
  setTransport("done", "run finished");
  // Let the graph catch up (unexplored options, monitors, events), then read it once more.
  setTimeout(() => {
    if (run.closed) return;
    refreshRun(run).catch(() => {});
    if (run.ws) {
      const ws = run.ws;
      run.ws = null;
      ws.close();
    }
  }, 800);
}

/** Read the run from the graph soon, and again a little later: what only the graph
 * knows (options never explored, monitor links, stored events) lands there a moment
 * after the live message. */
function scheduleReconcile(run) {
  clearTimeout(run.reconcileTimer);
  const again = (delays) => {
    if (!delays.length) return;
    run.reconcileTimer = setTimeout(() => {
      if (run.closed) return;
      refreshRun(run).catch(() => {});
      again(delays.slice(1));
    }, delays[0]);
  };
  again([600, 2400]);
}

// -- rendering the tree ----------------------------------------------------------------------

function scheduleRender(run) {
  if (run.frame) return;
  run.frame = requestAnimationFrame(() => {
    run.frame = 0;
    render(run);
  });
}

/** Render the nodes that changed since the last frame. Each costs time in proportion to
 * itself (a map lookup finds the children waiting for it, a binary search its place),
 * never to the size of the run, so a run of thousands of spans loads and polls in time
 * in proportion to it. */
function render(run) {
  if (run.closed) return;
  const dirty = [...run.dirty];
  run.dirty.clear();
  for (const id of dirty) renderNode(run, id);
  // the other attempts of a step whose attempts changed: their labels
  for (const id of run.relabel) {
    const n = run.nodes.get(id);
    const li = run.items.get(id);
    if (n && li) drawLabel(run, n, li);
  }
  run.relabel.clear();
  // Children that arrived before their parent: place them under it now (in the order
  // they have at the top, as they were placed in).
  for (const id of dirty) {
    const waiting = run.waiting.get(id);
    if (!waiting) continue;
    const lis = [...waiting].map((childId) => run.items.get(childId));
    if (lis.length > 1) lis.sort((a, b) => placedAt(run, a) - placedAt(run, b) || documentOrder(a, b));
    for (const li of lis) placeNode(run, run.nodes.get(li.dataset.spanId), li);
  }
  numberItems(run);
  syncTabStop(run);
  renderHeader(run);
  renderInsights(run);
  if (run.selected && dirty.includes(run.selected)) renderDetail();
}

function documentOrder(a, b) {
  return a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING ? -1 : 1;
}

function renderNode(run, id) {
  const n = run.nodes.get(id);
  if (!n || n.name === null) return;
  let li = run.items.get(id);
  if (!li) {
    li = createItem(run, n);
    run.items.set(id, li);
  }
  const state = n.state || "unknown";
  li.dataset.state = state;
  li.dataset.kind = n.kind || "span";
  li.dataset.name = n.name;
  li.dataset.parent = n.parent_span_id || "";
  li.classList.toggle("unexplored", state === "unexplored");
  const btn = li.querySelector(":scope > .row > .node-btn");
  const nameEl = btn.querySelector(".name");
  // an empty name reads "(unnamed)", as in the runs list; a tool span named after its
  // library's class says which tool it called: "get_weather (SimpleTool)"
  const name = shownName(n);
  nameEl.textContent = name;
  nameEl.title = name; // the full name, when the row cuts it
  const kind = btn.querySelector(".kind");
  kind.className = `badge kind kind-${classPart(n.kind || "span")}`;
  kind.textContent = n.kind || "span";
  const badgeEl = btn.querySelector(".state");
  badgeEl.className = `badge state state-${classPart(state)}`;
  badgeEl.dataset.state = state;
  badgeEl.textContent = state;
  btn.querySelector(".dur").textContent = durationText(n, "");
  drawBar(run, n, btn.querySelector(".bar"));
  trackAttempt(run, n);
  drawLabel(run, n, li);
  li.setAttribute("aria-selected", String(run.selected === id));
  const link = li.querySelector(":scope > .row > .jaeger");
  const href = jaegerHref(n); // none for an option never explored: Jaeger has no such span
  link.hidden = !href;
  if (href) link.href = href;
  else link.removeAttribute("href");
  link.setAttribute("aria-label", `Open ${name} in Jaeger`);
  if (n.flash) {
    flash(li, n.flash);
    n.flash = null;
  }
  placeNode(run, n, li);
}

// -- the rows' time bars ----------------------------------------------------------------------
// Each row draws when its span ran within the run: a bar from its start to its end (to
// now while it runs) on a track as wide in every row, so that spans that ran side by side
// (parallel steps, branches, a monitor beside what it watches) overlap, and a retry's
// wait or a slow step stands out. A bar holds its own times only (CSS variables --s and
// --e, in ms from the first start the page saw); the run's extent (--lo, --span) is set
// once, on the tree: a span that widens the run moves every bar without touching a row.

/** Draw `n`'s bar (hidden while its start is unknown, and for an option never run). */
function drawBar(run, n, bar) {
  const start = n.state !== "unexplored" && typeof n.start_ns === "number" ? n.start_ns / 1e6 : null;
  if (start === null) {
    bar.hidden = true;
    return;
  }
  if (run.epoch === null) run.epoch = start;
  const s = start - run.epoch;
  // a span still running in a run that has finished (one its instrumentation never
  // ended) runs to the run's end, not on to now
  const running = n.state === "running" && !run.finished;
  let e = s;
  if (running) e = Date.now() - run.epoch;
  else if (n.state === "running") e = run.hi ?? s;
  else if (typeof n.end_ns === "number") e = n.end_ns / 1e6 - run.epoch;
  else if (typeof n.duration_ms === "number") e = s + n.duration_ms;
  e = Math.max(e, s); // (a running span of a server whose clock is ahead of this one's)
  bar.style.setProperty("--s", s.toFixed(3));
  bar.style.setProperty("--e", e.toFixed(3));
  bar.hidden = false;
  run.lo = run.lo === null ? s : Math.min(run.lo, s);
  // now, for a running span, only until the next tick (which reads them all again): a
  // run that ended keeps the track of its spans' own times
  if (running) run.liveHi = Math.max(run.liveHi ?? e, e);
  const end = running ? s : e;
  run.hi = run.hi === null ? end : Math.max(run.hi, end);
  showExtent(run);
}

/** What a bar says when hovered: when its span started within the run, and for how
 * long it ran ("started at +12.3 ms, ran 40.7 ms"; "running for 2.10 s"). */
function barTitle(run, n) {
  if (!n || run.lo === null || typeof n.start_ns !== "number") return "";
  const at = n.start_ns / 1e6 - run.epoch - run.lo;
  const took = durationText(n, "");
  const ran = n.state === "running" ? `running for ${took}` : took ? `ran ${took}` : "";
  return [`started at +${fmtDuration(Math.max(at, 0))}`, ran].filter(Boolean).join(", ");
}

/** Set the run's extent, the track every bar is drawn on, on the tree (when it moved).
 * While a span runs, the track reaches a quarter past what is needed (a second at
 * least) and moves on only when that is used up: a change of it restyles every row, so a live run of thousands
 * of spans, each starting later than the last, does not pay that at every frame. Once
 * none runs, it is the spans' own times. */
function showExtent(run) {
  if (run.lo === null) return;
  const need = Math.max(run.hi, run.liveHi ?? -Infinity);
  const [shownLo, shownHi] = run.shownExtent;
  const live = run.liveHi !== null;
  if (run.lo === shownLo && (live ? need <= shownHi : need === shownHi)) return;
  const hi = live ? need + Math.max((need - run.lo) / 4, 1000) : need;
  run.shownExtent = [run.lo, hi];
  const tree = $("tree-root");
  tree.style.setProperty("--lo", run.lo.toFixed(3));
  tree.style.setProperty("--span", Math.max(hi - run.lo, 0.001).toFixed(3));
}

/** A row's attempt ("attempt 2"), whether it is a failure retried, and its label. */
function drawLabel(run, n, li) {
  const btn = li.querySelector(":scope > .row > .node-btn");
  const { number, retried } = attemptInfo(run, n);
  // and how many it may make in all, as `spangraph query tree` says it ("attempt 2/4")
  const most = n.attributes[MAX_ATTEMPTS];
  const of = number && Number.isInteger(most) && most > 1 ? most : null;
  btn.querySelector(".attempt").textContent = number ? `attempt ${number}${of ? `/${of}` : ""}` : "";
  btn.parentElement.classList.toggle("with-attempt", number !== null);
  const badge = btn.querySelector(".state");
  badge.classList.toggle("retried", retried);
  if (retried) badge.title = "failed, then retried";
  else badge.removeAttribute("title");
  const state = n.state || "unknown";
  const took = n.state !== "running" ? fmtDuration(n.duration_ms) : "";
  const label = `${n.kind || "span"} ${shownName(n)}${number ? `, attempt ${number}${of ? ` of ${of}` : ""}` : ""}, ${state}`
    + `${retried ? ", retried" : ""}${took ? `, ${took}` : ""}`;
  btn.setAttribute("aria-label", label);
  li.setAttribute("aria-label", label); // the tree item's name (not its children's text)
}

// -- a retried step's attempts -----------------------------------------------------------
// Each attempt of a step is a span of its own (`spangraph.step.attempt` 1, 2, …), beside
// the others under the same parent. Attempts are grouped by parent and name; a group
// knows its attempts by number, so that a new attempt relabels only the one before it
// (and, the first time the step is seen retried, the group once).

const ATTEMPT = "spangraph.step.attempt";
const MAX_ATTEMPTS = "spangraph.step.max_attempts";

/** A step's attempt number, null for a span that is no step attempt. */
function attemptNumber(n) {
  const a = n ? n.attributes[ATTEMPT] : null;
  return Number.isInteger(a) && a >= 1 ? a : null;
}

/** Count `n` in its step's group of attempts (again when its parent, name or number
 * changed), and mark for relabelling the attempts whose label that may change. */
function trackAttempt(run, n) {
  const number = attemptNumber(n);
  const key = number === null ? null : `${n.parent_span_id ?? ""}\n${n.name}`;
  const had = run.attemptOf.get(n.span_id);
  if (had && had[0] === key && had[1] === number) {
    // the same place: its start may have changed, which the attempt before it reads
    for (const id of run.attempts.get(key).byNumber.get(number - 1) ?? []) run.relabel.add(id);
    return;
  }
  if (had) {
    const [oldKey, oldNumber] = had;
    const group = run.attempts.get(oldKey);
    const same = group.byNumber.get(oldNumber);
    same.delete(n.span_id);
    if (!same.size) group.byNumber.delete(oldNumber);
    if (oldNumber > 1) group.retries -= 1;
    for (const list of group.byNumber.values()) for (const id of list) run.relabel.add(id);
    if (!group.byNumber.size) run.attempts.delete(oldKey);
    run.attemptOf.delete(n.span_id);
  }
  if (key === null) return;
  let group = run.attempts.get(key);
  if (!group) run.attempts.set(key, (group = { byNumber: new Map(), retries: 0 }));
  let same = group.byNumber.get(number);
  if (!same) group.byNumber.set(number, (same = new Set()));
  same.add(n.span_id);
  run.attemptOf.set(n.span_id, [key, number]);
  if (number > 1 && ++group.retries === 1) {
    // the step is seen retried: every attempt of it says which it is
    for (const list of group.byNumber.values()) for (const id of list) run.relabel.add(id);
  } else {
    for (const id of group.byNumber.get(number - 1) ?? []) run.relabel.add(id);
  }
}

/** How a step attempt reads: its number (null when the step neither was nor may be
 * retried: a plain step is attempt 1), and whether it failed and the next attempt of the
 * step came after it (a failure the step was retried from, not where it ended). */
function attemptInfo(run, n) {
  const number = attemptNumber(n);
  const had = run.attemptOf.get(n.span_id);
  if (number === null || !had) return { number: null, retried: false };
  const group = run.attempts.get(had[0]);
  const most = n.attributes[MAX_ATTEMPTS];
  const shown = number > 1 || group.retries > 0 || (Number.isInteger(most) && most > 1);
  let retried = false;
  if (n.state === "failed") {
    for (const id of group.byNumber.get(number + 1) ?? []) {
      const next = run.nodes.get(id);
      if (next && !(next.start_ns < n.start_ns)) retried = true;
    }
  }
  return { number: shown ? number : null, retried };
}

/** A node's item: a tree item (role treeitem, focusable, out of the Tab order until it
 * is the tree's Tab stop) holding its row and the group of its children. The row's
 * buttons and link are out of the Tab order: the keys move between items, and the node
 * panel has the node's Jaeger link. */
function createItem(run, n) {
  const id = n.span_id;
  const twisty = h("button", {
    type: "button", class: "twisty", "aria-expanded": "true", tabindex: "-1",
    on: { click: () => { toggle(li); focusItem(li); } },
  }, "▾");
  const btn = h("button", {
    type: "button", class: "node-btn", tabindex: "-1", on: { click: (ev) => pickNode(id, ev) },
  }, h("span", { class: "badge kind" }), h("span", { class: "name" }),
    h("span", { class: "badge state" }), h("span", { class: "attempt" }),
    // (before the duration: its text takes the room left of it, not the bars' column)
    h("span", { class: "last-event", "aria-hidden": "true" }),
    h("span", { class: "dur" }),
    h("span", {
      class: "bar", "aria-hidden": "true", hidden: true,
      on: { mouseenter: (ev) => { ev.currentTarget.title = barTitle(run, run.nodes.get(id)); } },
    }, h("span", { class: "bar-fill" })));
  const link = h("a", {
    class: "jaeger", target: "_blank", rel: "noopener", title: "Open this span in Jaeger", tabindex: "-1",
  }, "Jaeger ↗");
  const li = h("li", {
    class: "tree-item leaf", role: "treeitem", tabindex: "-1", "aria-selected": "false",
    dataset: { spanId: id },
  },
  h("div", { class: "row" }, twisty, btn, link),
  h("ul", { class: "tree-list children", role: "group" }));
  return li;
}

/** The list of an item's children (its last element, see createItem). */
function childList(li) {
  return li.lastElementChild;
}

/** Where a node goes among its siblings: by start time; options never run go last. */
function startOf(n) {
  if (!n || n.state === "unexplored") return Infinity;
  return typeof n.start_ns === "number" ? n.start_ns : Infinity;
}

/** The start an item was placed by. Every list of the tree is in the order of these
 * (each item goes in after the siblings placed by a start up to its own), so a place is
 * found by binary search, even while a sibling whose start changed waits for its turn. */
function placedAt(run, li) {
  return run.placedAt.get(li) ?? Infinity;
}

/** Put a node's <li> under its parent (or at the top when its parent is unknown), in
 * start order, after the siblings that start at the same time; leave it where it is
 * when it is already right (keeps focus). A span that would become its own ancestor
 * (spans sent by other programs can name each other as parents, or a span itself) stays
 * at the top: an item cannot be inside itself. */
function placeNode(run, n, li) {
  let parentLi = n.parent_span_id ? run.items.get(n.parent_span_id) ?? null : null;
  if (parentLi && isWithin(run, parentLi, li)) parentLi = null;
  markWaiting(run, n, !parentLi);
  const me = startOf(n);
  const placed = run.up.has(li);
  const oldParent = placed ? run.up.get(li) : null;
  if (placed && oldParent === parentLi) {
    const kids = kidsOf(run, parentLi);
    const i = indexIn(run, kids, li);
    if ((i === 0 || placedAt(run, kids[i - 1]) <= me) && (i === kids.length - 1 || placedAt(run, kids[i + 1]) >= me)) {
      run.placedAt.set(li, me);
      return;
    }
  }
  if (placed) {
    const old = kidsOf(run, oldParent);
    old.splice(indexIn(run, old, li), 1);
    run.touched.add(oldParent);
  }
  let kids = run.kids.get(parentLi);
  if (!kids) run.kids.set(parentLi, (kids = []));
  const at = insertionIndex(run, kids, me);
  kids.splice(at, 0, li);
  run.up.set(li, parentLi);
  run.placedAt.set(li, me);
  run.touched.add(parentLi);
  // moving an element takes the focus off it: an item moved while focused keeps it
  const focused = document.activeElement;
  putInPage(run, li, parentLi, at);
  if (focused && document.activeElement !== focused && focused.isConnected) focused.focus({ preventScroll: true });
  if (parentLi) updateLeaf(run, parentLi);
  if (oldParent && oldParent !== parentLi) updateLeaf(run, oldParent);
}

// The page nests the items of the tree (li > ul > li) down to this level. An item below
// it is a row of its own (class "deep") in the list of its ancestor at this level, after
// its parent's row, in tree order, indented by its level: Chromium's renderer crashed
// past ~1 500 nested levels, and each nested level cost style and layout work for every
// row below it (a run 1 400 levels deep: 1.2 s nested, 0.3 s as rows). The ARIA tree is
// the same either way: each item has its aria-level, aria-posinset and aria-setsize.
const NESTED_LEVELS = 32;
const NO_ITEMS = Object.freeze([]);

/** The items placed under `li` (null: at the top of the tree), in order. */
function kidsOf(run, li) {
  return run.kids.get(li) ?? NO_ITEMS;
}

/** The item `li` is placed under (null: it is at the top). */
function parentItem(run, li) {
  return run.up.get(li) ?? null;
}

function levelOf(li) {
  return Number(li.getAttribute("aria-level")) || 0;
}

/** Whether `item` is `li` or an item under it (a walk up as many levels as it is below
 * `li`, no further). */
function isWithin(run, item, li) {
  if (item === li) return true;
  if (!kidsOf(run, li).length) return false;
  let at = item;
  for (let steps = levelOf(item) - levelOf(li); steps > 0 && at; steps--) at = parentItem(run, at);
  return at === li;
}

/** Where `li` is in `kids`, the items of its list: a binary search by the start it was
 * placed by, then a look along the items placed by the same start. */
function indexIn(run, kids, li) {
  const me = placedAt(run, li);
  let lo = 0;
  let hi = kids.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (placedAt(run, kids[mid]) < me) lo = mid + 1;
    else hi = mid;
  }
  while (lo < kids.length && kids[lo] !== li) lo += 1;
  return lo < kids.length ? lo : kids.indexOf(li);
}

/** The item `step` places after (-1: before) `li` among its siblings; null: none. */
function sibling(run, li, step) {
  const kids = kidsOf(run, parentItem(run, li));
  return kids[indexIn(run, kids, li) + step] ?? null;
}

/** The place in `kids` of an item placed by the start `me`: after every item placed by a
 * start up to its own. Spans mostly come in start order, so the last item is looked at
 * first; else a binary search. */
function insertionIndex(run, kids, me) {
  const n = kids.length;
  if (!n || placedAt(run, kids[n - 1]) <= me) return n;
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (placedAt(run, kids[mid]) > me) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Put `li`, placed `at` among the items under `parentLi`, into the page. Nested at the
 * level it had, it moves with everything under it; otherwise (a new item, a row of its
 * own, a change of level) it and every item under it are put in again. */
function putInPage(run, li, parentLi, at) {
  const level = parentLi ? levelOf(parentLi) + 1 : 1;
  const kids = kidsOf(run, parentLi);
  if (level <= NESTED_LEVELS) {
    const list = parentLi ? childList(parentLi) : $("tree-root");
    const before = kids[at + 1] ?? null;
    if (levelOf(li) !== level) mount(run, li, level, list, before, false);
    else if (li.parentElement !== list || li.nextElementSibling !== before) list.insertBefore(li, before);
    return;
  }
  // a row of its own: after the rows of its previous sibling (and of the items under
  // it), else after its parent's row, in the list of the item at NESTED_LEVELS above it
  for (const item of subtree(run, li)) if (item.isConnected) item.remove();
  const first = level === NESTED_LEVELS + 1; // its parent is that item
  const list = first ? childList(parentLi) : parentLi.parentElement;
  let after = at > 0 ? kids[at - 1] : null;
  while (after && kidsOf(run, after).length) after = kidsOf(run, after).at(-1);
  const before = after ? after.nextElementSibling : first ? list.firstElementChild : parentLi.nextElementSibling;
  mount(run, li, level, list, before, !first && (parentLi.hidden || parentLi.classList.contains("collapsed")));
}

/** `li` and the items under it, in tree order. */
function subtree(run, li) {
  const out = [];
  const todo = [li];
  while (todo.length) {
    const item = todo.pop();
    out.push(item);
    const kids = kidsOf(run, item);
    for (let i = kids.length - 1; i >= 0; i--) todo.push(kids[i]);
  }
  return out;
}

/** Put `li` at `level` into `list` before `before`, and the items under it after it:
 * nested in its own list down to NESTED_LEVELS, below it rows of their own. */
function mount(run, li, level, list, before, hidden) {
  putItem(li, level, list, before, hidden);
  const kids = kidsOf(run, li);
  if (level < NESTED_LEVELS) {
    for (let i = kids.length - 1; i >= 0; i--) mount(run, kids[i], level + 1, childList(li), kids[i + 1] ?? null, false);
    return;
  }
  // rows of their own, in tree order; hidden under a collapsed (or hidden) row of its own
  const rows = [];
  const todo = [];
  const shut = level > NESTED_LEVELS && (hidden || li.classList.contains("collapsed"));
  for (let i = kids.length - 1; i >= 0; i--) todo.push([kids[i], level + 1, shut]);
  while (todo.length) {
    const row = todo.pop();
    rows.push(row);
    const [item, at, rowHidden] = row;
    const under = kidsOf(run, item);
    const shutUnder = rowHidden || item.classList.contains("collapsed");
    for (let i = under.length - 1; i >= 0; i--) todo.push([under[i], at + 1, shutUnder]);
  }
  const into = level === NESTED_LEVELS ? childList(li) : list;
  let next = level === NESTED_LEVELS ? null : before;
  for (let k = rows.length - 1; k >= 0; k--) {
    const [item, at, rowHidden] = rows[k];
    putItem(item, at, into, next, rowHidden);
    next = item;
  }
}

function putItem(li, level, list, before, hidden) {
  if (li.parentElement !== list || li.nextElementSibling !== before) list.insertBefore(li, before);
  li.hidden = hidden;
  const text = String(level);
  if (li.getAttribute("aria-level") === text) return;
  li.setAttribute("aria-level", text);
  const deep = level > NESTED_LEVELS;
  li.classList.toggle("deep", deep);
  const indent = deep ? `${(level - NESTED_LEVELS - 1) * 14}px` : "";
  li.style.paddingLeft = indent;
  li.style.backgroundSize = indent && `${indent} 100%`;
}

/** aria-posinset and aria-setsize of the items of each list that changed this frame:
 * once per list and frame, so a run read at once is numbered in time in proportion to
 * it, and a frame that places nothing numbers nothing. */
function numberItems(run) {
  for (const parentLi of run.touched) {
    const kids = kidsOf(run, parentLi);
    const size = String(kids.length);
    for (let i = 0; i < kids.length; i++) {
      const li = kids[i];
      const pos = String(i + 1);
      if (li.getAttribute("aria-posinset") !== pos) li.setAttribute("aria-posinset", pos);
      if (li.getAttribute("aria-setsize") !== size) li.setAttribute("aria-setsize", size);
    }
  }
  run.touched.clear();
}

/** Keep track of the items at the top whose parent is named but not shown (not seen
 * yet, or a parent it would end up inside of): `render` places them again when that
 * parent changes, without searching the tree for them. */
function markWaiting(run, n, top) {
  const id = n.span_id;
  const want = top && n.parent_span_id ? n.parent_span_id : null;
  const had = run.waitingOn.get(id) ?? null;
  if (had === want) return;
  if (had !== null) {
    const set = run.waiting.get(had);
    set.delete(id);
    if (!set.size) run.waiting.delete(had);
    run.waitingOn.delete(id);
  }
  if (want !== null) {
    let set = run.waiting.get(want);
    if (!set) run.waiting.set(want, (set = new Set()));
    set.add(id);
    run.waitingOn.set(id, want);
  }
}

function updateLeaf(run, li) {
  const hasChildren = kidsOf(run, li).length > 0;
  li.classList.toggle("leaf", !hasChildren);
  const twisty = li.querySelector(":scope > .row > .twisty");
  const name = displayName(li.dataset.name);
  const open = !li.classList.contains("collapsed");
  twisty.setAttribute("aria-label", `${open ? "Collapse" : "Expand"} ${name}`);
  // aria-expanded only on an item with children (a leaf has nothing to expand)
  if (hasChildren) li.setAttribute("aria-expanded", String(open));
  else li.removeAttribute("aria-expanded");
}

function toggle(li, open) {
  const willOpen = open ?? li.classList.contains("collapsed");
  li.classList.toggle("collapsed", !willOpen);
  const twisty = li.querySelector(":scope > .row > .twisty");
  twisty.setAttribute("aria-expanded", String(willOpen));
  twisty.textContent = willOpen ? "▾" : "▸";
  const run = current;
  if (!run) return;
  updateLeaf(run, li);
  // rows of their own under it are shown and hidden one by one (see NESTED_LEVELS)
  if (levelOf(li) > NESTED_LEVELS) {
    for (const item of subtree(run, li)) {
      const shut = item.hidden || item.classList.contains("collapsed");
      for (const kid of kidsOf(run, item)) kid.hidden = shut;
    }
  }
  // the focus inside what was just hidden goes to the item that hid it
  const focused = itemOf(document.activeElement);
  if (!willOpen && focused && focused !== li && isWithin(run, focused, li)) li.focus({ preventScroll: true });
  syncTabStop(run);
}

function flash(li, what) {
  const row = li.querySelector(":scope > .row");
  const label = row.querySelector(".last-event");
  label.textContent = what === "ended" ? "" : what;
  row.classList.remove("flash");
  void row.offsetWidth; // restart the animation
  row.classList.add("flash");
}

// -- the tree's keys: the WAI-ARIA tree view pattern, with a roving tabindex -------------

/** The item `el` is (or is in the row of); null outside the tree. */
function itemOf(el) {
  const li = el instanceof Element ? el.closest("li.tree-item") : null;
  return li && $("tree-root").contains(li) ? li : null;
}

/** Whether an item shows its children (it has some and is not collapsed). */
function isOpen(li) {
  return !li.classList.contains("leaf") && !li.classList.contains("collapsed");
}

/** The last item shown in `li`'s subtree (itself when it is closed). */
function lastShown(run, li) {
  while (li && isOpen(li)) li = kidsOf(run, li).at(-1) ?? null;
  return li;
}

/** The item shown after / before `li` (depth first, collapsed subtrees skipped). */
function nextShown(run, li) {
  if (isOpen(li)) return kidsOf(run, li)[0] ?? null;
  for (let at = li; at; at = parentItem(run, at)) {
    const next = sibling(run, at, 1);
    if (next) return next;
  }
  return null;
}

function previousShown(run, li) {
  const previous = sibling(run, li, -1);
  return previous ? lastShown(run, previous) : parentItem(run, li);
}

/** Make `li` the tree's one element in the Tab order (every other item, and every
 * button and link of the rows, has tabindex -1). */
function setTabStop(run, li) {
  if (run.tabStop === li) return;
  if (run.tabStop) run.tabStop.tabIndex = -1;
  run.tabStop = li;
  if (li) li.tabIndex = 0;
}

/** Where Tab enters the tree: the selected node (inside a collapsed node: the outermost
 * collapsed one, which shows), else the first node. */
function restingTabStop(run) {
  let at = run.selected ? run.items.get(run.selected) ?? null : null;
  if (at && !at.isConnected) at = null;
  for (let p = at && parentItem(run, at); p; p = parentItem(run, p)) if (p.classList.contains("collapsed")) at = p;
  return at || kidsOf(run, null)[0] || null;
}

/** The Tab stop follows the focus while it is in the tree, else rests (see above).
 * Never moves the focus: rows added or redrawn by live updates leave it where it is. */
function syncTabStop(run) {
  const focused = itemOf(document.activeElement);
  setTabStop(run, focused || restingTabStop(run));
}

/** Focus an item (it becomes the Tab stop) and bring its row into view. */
function focusItem(li) {
  if (current) setTabStop(current, li);
  li.focus({ preventScroll: true });
  li.firstElementChild.scrollIntoView({ block: "nearest" });
}

/** Keys on a focused node (or a button or link of its row): ↓/↑ the next or previous
 * node shown; → expands a collapsed node, else goes to its first child; ← collapses an
 * open node, else goes to its parent; Home/End the first and last node shown; Enter and
 * Space select the node (as a click does); * expands its siblings. */
function onTreeKey(ev) {
  const li = itemOf(ev.target);
  if (!current || !li || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const run = current;
  const top = kidsOf(run, null);
  let to = null;
  switch (ev.key) {
    case "ArrowDown":
      to = nextShown(run, li);
      break;
    case "ArrowUp":
      to = previousShown(run, li);
      break;
    case "ArrowRight":
      if (li.classList.contains("collapsed") && !li.classList.contains("leaf")) toggle(li, true);
      else if (isOpen(li)) to = kidsOf(run, li)[0] ?? null;
      break;
    case "ArrowLeft":
      if (isOpen(li)) toggle(li, false);
      else to = parentItem(run, li);
      break;
    case "Home":
      to = top[0] ?? null;
      break;
    case "End":
      to = lastShown(run, top.at(-1) ?? null);
      break;
    case "Enter":
    case " ":
      if (ev.target !== li) return; // a button or link of the row: its own action
      selectNode(li.dataset.spanId);
      break;
    case "*":
      for (const sibling of kidsOf(run, parentItem(run, li))) {
        if (sibling.classList.contains("collapsed") && !sibling.classList.contains("leaf")) toggle(sibling, true);
      }
      break;
    default:
      return;
  }
  ev.preventDefault();
  if (to) focusItem(to);
}

function renderHeader(run) {
  const root = rootNode(run);
  if (!root) {
    if (!run.nodes.size) $("run-title").textContent = "Waiting for the run…";
    return;
  }
  const title = $("run-title");
  const name = displayName(root.name);
  if (title.textContent !== name) title.textContent = name;
  if (title.title !== name) title.title = name; // the full name, when cut
  // no top span yet (over OTLP its children come first): the run is as its top-most
  // spans are together, not as the first of them
  const headless = root.parent_span_id && !isTop(run, root) && !run.nodes.has(root.parent_span_id);
  $("run-state").replaceChildren(stateBadge(headless ? headlessState(run) : root.state));
  // the run id in a <bdi>: a right-to-left override in it cannot reorder the rest
  const parts = [["workflow ", bdi(run.id)]];
  if (root.start_ns) parts.push(`started ${fmtTime(root.start_ns)}`);
  const d = durationText(root);
  if (d) parts.push(d);
  const totals = runTotals(run);
  parts.push(`${totals.spans} span${totals.spans === 1 ? "" : "s"}`);
  if (headless) parts.push("its top span not received (yet)");
  if (totals.calls) parts.push(usageText(totals));
  const failure = root.state === "failed" ? failureText(run, root) : [];
  if (failure.length) parts.push(failure);
  // a LangGraph run that stopped at an interrupt(): it ended, and waits for an answer;
  // at a static breakpoint (interrupt_before / interrupt_after): it waits to go on
  const breakpoint = root.attributes["langgraph.breakpoint"];
  // a run of its thread (execution) started after this one: the thread went on, so this
  // run no longer waits (it was answered, or went on, maybe in another process)
  const wentOn = (run.execution?.runs ?? []).some((r) => runId(r) !== run.id
    && typeof r.start_ns === "number" && typeof root.start_ns === "number" && r.start_ns > root.start_ns);
  const after = wentOn ? "; the thread went on in a later run" : "";
  if (root.attributes["langgraph.interrupted"] === true && typeof breakpoint === "string") {
    const next = root.attributes["langgraph.next"];
    const due = Array.isArray(next) ? next.filter((n) => typeof n === "string").join(", ") : "";
    const stopped = breakpoint === "before" && due ? `stopped at a breakpoint before ${due}`
      : `stopped at a breakpoint${due ? ` (next: ${due})` : ""}`;
    parts.push(wentOn ? `${stopped}${after}` : `waiting to go on: ${stopped}`);
  } else if (root.attributes["langgraph.interrupted"] === true) {
    // the node that asked: an interrupted step with no interrupted step under it (a
    // subgraph's node marks the node around it too)
    const marked = [...run.nodes.values()].filter(
      (n) => n !== root && n.kind === "step" && n.attributes["langgraph.interrupted"] === true,
    );
    const around = new Set(marked.map((n) => n.parent_span_id));
    const asking = marked.find((n) => !around.has(n.span_id));
    const said = wentOn ? "interrupted" : "waiting for an answer: interrupted";
    if (asking) parts.push([...nodeButton(`${said} at `, asking), after]);
    else parts.push(`${said}${after}`);
  }
  $("run-meta").replaceChildren(...parts.flatMap((p, i) => (i ? [" · ", p] : [p])).flat());
  renderExecution(run);
  const href = jaegerHref(root);
  const link = $("run-jaeger");
  link.hidden = !href;
  if (href) {
    link.href = href;
    link.setAttribute("aria-label", `Open the run ${name} in Jaeger`);
  }
}

/** What a failed run says of its failure: "failed at <node> (attempt 3): <the first line
 * of its error>", or, when the run's own code raised, "failed: <the run's error>". */
function failureText(run, root) {
  const origin = failureOrigin(run, root);
  const error = (text) => h("bdi", { class: "failure", title: text, text: firstLine(text) });
  if (!origin) {
    const own = statusMessage(root);
    return own ? ["failed: ", error(own)] : [];
  }
  const { number } = attemptInfo(run, origin);
  const said = statusMessage(origin) || errorTypeText(origin) || carried(run, origin);
  const out = nodeButton("failed at ", origin);
  if (number) out.push(` (attempt ${number})`);
  if (said) out.push(": ", error(said));
  return out;
}

/** The error of the nearest failed span above `node` that says one: a span that failed
 * without a message (pydantic-ai's tool span: its error is in an `exception` event, which
 * the tree does not load) failed the spans above it with its error. "" when none says. */
function carried(run, node) {
  const seen = new Set();
  for (let at = run.nodes.get(node.parent_span_id); at && !seen.has(at.span_id); at = run.nodes.get(at.parent_span_id)) {
    seen.add(at.span_id);
    if (at.state === "running") continue; // never ended (see failureOrigin): looked through
    if (at.state !== "failed") return "";
    const said = statusMessage(at);
    if (said) return said;
  }
  return "";
}

/** "`text`<node's name>" with the name a button that selects the node. */
function nodeButton(text, node) {
  const where = shownName(node);
  return [text, h("button", {
    type: "button", class: "link", title: where, "aria-label": `${text}${where}: show it`,
    on: { click: () => selectNode(node.span_id) },
  }, bdi(where))];
}

/** Whether `child`'s error is `parent`'s, gone through unchanged: the same status
 * message, the same after an exception type (`Type: message`), or a timeout the child's own (`TimeoutError: exceeded its timeout of 0.5 s`)
 * that the parent names (`TimeoutError: step 'fetch' exceeded its timeout of 0.5 s`). */
function sameError(parent, child) {
  // (a stack after the message aside: OpenInference's LangChain writes each span's own)
  const p = statusMessage(parent);
  const c = statusMessage(child);
  if (!p || !c) return false;
  if (p === c) return true;
  // the same error with its type before it ("MidStreamFallbackError: litellm.Mid…",
  // where the child's instrumentation wrote the message alone)
  const typed = /^([A-Za-z_][\w.]*): ([\s\S]*)$/.exec(p);
  if (typed !== null && typed[2] === c) return true;
  const fired = /^TimeoutError: (exceeded its timeout of \S+ s)$/.exec(c);
  return fired !== null && p.startsWith("TimeoutError: ") && p.endsWith(` ${fired[1]}`)
    && child.name !== null && p.includes(child.name);
}

/** The run's spans (its nodes, less the options never explored: no span, a node of the
 * graph only), its model calls and the tokens they report (OpenTelemetry's
 * `gen_ai.usage.*` or OpenInference's `llm.token_count.*`, on LLM spans only: an agent's
 * span may repeat its calls' totals), a call two instrumentations recorded once
 * (`modelCalls`).
 * Counted again at each header render, which is once a frame at most. */
function runTotals(run) {
  const totals = { spans: 0, calls: 0, input: 0, output: 0, counted: 0, running: 0 };
  for (const n of run.nodes.values()) if (n.state !== "unexplored") totals.spans += 1;
  for (const n of modelCalls(run.nodes.values())) {
    totals.calls += 1;
    const { input, output } = usageOf(n.attributes);
    totals.input += input ?? 0;
    totals.output += output ?? 0;
    if (input !== null || output !== null) totals.counted += 1;
    else if (n.state === "running") totals.running += 1; // its usage may yet come
  }
  return totals;
}

/** "3 model calls, 1,234 tokens (1,000 in, 234 out)"; calls still running and calls
 * that ended without reporting usage (a stream without it) are counted apart:
 * "(…; 1 running, 1 without usage)". */
function usageText(totals) {
  const calls = `${totals.calls.toLocaleString()} model call${totals.calls === 1 ? "" : "s"}`;
  const missing = totals.calls - totals.counted - totals.running;
  const apart = [
    totals.running ? `${totals.running.toLocaleString()} running` : "",
    missing ? `${missing.toLocaleString()} without usage` : "",
  ].filter(Boolean).join(", ");
  if (!totals.counted) return apart ? `${calls}, ${apart}` : calls;
  const sum = totals.input + totals.output;
  return `${calls}, ${sum.toLocaleString()} tokens (${totals.input.toLocaleString()} in, `
    + `${totals.output.toLocaleString()} out${apart ? `; ${apart}` : ""})`;
}

/** The ids of the spans with a failed span under them: up from each failed span, once
 * each (linear in the run's size, however deep). */
function failedAbove(run) {
  const marked = new Set();
  for (const n of run.nodes.values()) {
    if (n.state !== "failed") continue;
    for (let up = n.parent_span_id; up && !marked.has(up); up = run.nodes.get(up)?.parent_span_id) {
      marked.add(up);
    }
  }
  return marked;
}

/** Where a failed run failed: down from its top span, each time to the failed child whose
 * failure ended its parent, to a span with no such child. That child has the parent's own
 * error (the same status message: the exception went through unchanged), else it is the
 * failed child after which nothing else of the parent ended (what the failure cancelled
 * aside): the parent raised on it, wrapped. A failure the code got past (an attempt a
 * retry recovered from, a step with a fallback after it) is not where the run failed.
 * Null when that is the top span itself: the run's own code raised. */
function failureOrigin(run, root) {
  const kids = new Map();
  for (const n of run.nodes.values()) {
    if (n.name === null || !n.parent_span_id) continue;
    const list = kids.get(n.parent_span_id);
    if (list) list.push(n);
    else kids.set(n.parent_span_id, [n]);
  }
  const ended = (n) => n.end_ns ?? -Infinity;
  const latest = (list) => list.reduce((a, b) => (ended(b) >= ended(a) ? b : a));
  const seen = new Set();
  let above = null; // failedAbove(run), when first needed
  let at = root;
  while (!seen.has(at.span_id)) {
    seen.add(at.span_id);
    const children = kids.get(at.span_id) || [];
    const failed = children.filter((n) => n.state === "failed");
    if (!failed.length) {
      // a child still running under the failed run: its instrumentation never ended it
      // (openinference-smolagents' agent span, when its model call failed): look through
      // it to the failure under it
      above ??= failedAbove(run);
      const stuck = children.find((n) => n.state === "running" && above.has(n.span_id));
      if (!stuck) break;
      at = stuck;
      continue;
    }
    const same = failed.filter((n) => sameError(at, n));
    const next = same.length ? latest(same) : latest(failed);
    if (!same.length) {
      const after = children.some((n) => n !== next && n.state !== "cancelled" && n.end_ns != null && n.end_ns > ended(next));
      if (after) break;
    }
    at = next;
  }
  return at === root ? null : at;
}

// -- node detail -----------------------------------------------------------------------------

function renderDetail() {
  renderDetailView(current, selectNode);
}

function renderInsights(run) {
  renderInsightsView(run, selectNode);
}

/** A node clicked with the mouse: selected, and where the node panel is out of sight or
 * mostly so (a narrow window puts it under the run), brought into view, as much of the
 * tree as fits left above it. Keys (ev.detail 0) move through the tree without leaving
 * it. */
function pickNode(spanId, ev) {
  selectNode(spanId);
  const panel = $("detail").closest("aside") || $("detail");
  const box = panel.getBoundingClientRect();
  if (ev.detail > 0 && box.top > window.innerHeight - Math.min(box.height, window.innerHeight) / 2) {
    panel.scrollIntoView({ block: "nearest" });
  }
}

function selectNode(spanId, { focus = true } = {}) {
  const run = current;
  if (!run) return;
  const old = run.items.get(run.selected);
  old?.setAttribute("aria-selected", "false");
  run.selected = spanId;
  run.detail = null;
  const li = run.items.get(spanId);
  if (li) {
    for (let p = parentItem(run, li); p; p = parentItem(run, p)) if (p.classList.contains("collapsed")) toggle(p, true);
    li.setAttribute("aria-selected", "true");
    li.scrollIntoView({ block: "nearest" });
    if (focus && document.activeElement !== li) focusItem(li);
  }
  syncTabStop(run);
  history.replaceState(null, "", `#run=${encodeURIComponent(run.id)}&node=${encodeURIComponent(spanId)}`);
  renderDetail();
  loadDetail(run, spanId);
}

async function loadDetail(run, spanId) {
  try {
    const found = await api(`/api/nodes/${encodeURIComponent(spanId)}`);
    if (run.closed || run.selected !== spanId) return;
    run.detail = found;
    mergeNode(run, found);
    scheduleRender(run);
    renderDetail();
  } catch (err) {
    if (err.status !== 404) console.warn("spangraph: node detail", err);
  }
}

function scheduleDetail(run) {
  clearTimeout(run.detailTimer);
  run.detailTimer = setTimeout(() => {
    if (!run.closed && run.selected) loadDetail(run, run.selected);
  }, 600);
}

/** Once a second: the elapsed time of running spans (text only, nothing re-rendered). */
function tick() {
  const run = current;
  if (!run || document.hidden) return;
  run.liveHi = null; // the running spans' bars below say it again
  for (const n of run.nodes.values()) {
    if (n.state !== "running") continue;
    const btn = run.items.get(n.span_id)?.querySelector(":scope > .row > .node-btn");
    if (!btn) continue;
    btn.querySelector(".dur").textContent = durationText(n, "");
    drawBar(run, n, btn.querySelector(".bar"));
  }
  showExtent(run);
  renderHeader(run);
  const n = run.selected ? run.nodes.get(run.selected) : null;
  const dd = document.querySelector("#detail dd[data-fact=Duration]");
  if (n && dd && n.state === "running") dd.textContent = durationText(n);
}

// -- start -----------------------------------------------------------------------------------

function parseHash() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  return { run: params.get("run"), node: params.get("node") };
}

function onHash() {
  const { run, node } = parseHash();
  if (!run) {
    // Back to the start page (no hash): no run. Another hash (an in-page link such as
    // #tree) is no route: the open run stays.
    if (!location.hash.replace(/^#/, "")) showNoRun();
    return;
  }
  if (current && current.id === run) {
    if (node && node !== current.selected && current.nodes.has(node)) selectNode(node);
    return;
  }
  openRun(run, node);
}

async function start() {
  $("token-change").hidden = !currentToken();
  // before the first request, which may ask for the token: the dialog cannot be
  // dismissed (Escape) while there is no token to go on with
  $("token-dialog").addEventListener("cancel", (ev) => { if (!currentToken()) ev.preventDefault(); });
  try {
    Object.assign(config, await api("/api/config"));
  } catch (err) {
    $("runs-status").textContent = `Could not reach the service: ${err.message}`;
  }
  $("run-filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadRuns(); });
  $("filter-state").addEventListener("change", loadRuns);
  let typing = null;
  $("filter-name").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(loadRuns, 250);
  });
  $("auto-refresh").addEventListener("change", scheduleRuns);
  $("runs-refresh").addEventListener("click", loadRuns);
  $("token-change").addEventListener("click", async () => {
    await askToken(false);
    loadRuns();
    if (current) openRun(current.id, current.selected);
  });
  window.addEventListener("hashchange", onHash);
  const tree = $("tree-root");
  tree.addEventListener("keydown", onTreeKey);
  tree.addEventListener("focusin", (ev) => {
    const li = itemOf(ev.target);
    if (current && li) setTabStop(current, li);
  });
  tree.addEventListener("focusout", (ev) => {
    // the focus leaves the tree: Tab brings it back to the selected node (else the first)
    if (current && !tree.contains(ev.relatedTarget)) setTabStop(current, restingTabStop(current));
  });
  // "Skip to the run tree": focus the tree, leave the address (the route) as it is.
  document.querySelector("a.skip")?.addEventListener("click", (ev) => {
    ev.preventDefault();
    $("tree").focus();
  });
  setInterval(tick, 1000);
  await loadRuns();
  scheduleRuns();
  onHash();
}

start();
