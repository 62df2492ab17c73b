// The Parhelia dashboard (docs/ui.md). Every figure comes from the MCP
// tools' calls (POST /api/call/TOOL: the CLI's --json values); live parts
// are pushed by the server (/api/events: server-sent events from the event
// log; /api/attach/SESSION: the terminal's WebSocket). Text from sessions
// is untrusted: it is only ever set as textContent, never as HTML.
import { Terminal } from "/assets/xterm.mjs";

const main = document.getElementById("main");
const streamState = document.getElementById("stream-state");

class ApiError extends Error {
  constructor(e) {
    super(e.message || "error");
    this.code = e.code;
    this.hint = e.hint;
  }
}

export async function api(tool, args = {}) {
  const r = await fetch(`/api/call/${tool}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(args),
    credentials: "same-origin",
  });
  let body;
  try {
    body = await r.json();
  } catch {
    throw new ApiError({ message: `HTTP ${r.status}` });
  }
  if (body.error) throw new ApiError(body.error);
  return body.result;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const svgNs = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function errorBox(err) {
  return el(
    "p",
    { class: "error", role: "alert" },
    err.code ? `${err.code}: ` : "",
    err.message,
    err.hint ? el("br") : null,
    err.hint ? el("span", { class: "muted" }, err.hint) : null,
  );
}

function usd(x) {
  if (x === null || x === undefined) return "-";
  return `$${Number(x).toFixed(x !== 0 && Math.abs(x) < 0.01 ? 4 : 2)}`;
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n) || 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

function age(iso) {
  if (!iso) return "-";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function debounce(fn, ms) {
  let t = null;
  return (...a) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...a), ms);
  };
}

function confirmAction(text, label = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  const ok = document.getElementById("confirm-ok");
  ok.textContent = label;
  ok.setAttribute("aria-label", label);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// What leaving a page must stop (its event streams, its terminal).
let teardown = [];
function onLeave(fn) {
  teardown.push(fn);
}

// `onOpen` runs each time the stream (re)opens: the server fixes where it
// follows from before it answers, so a snapshot read then misses no event.
function follow(params, onEvent, onOpen) {
  const es = new EventSource(`/api/events?${new URLSearchParams(params)}`);
  es.addEventListener("event", (e) => onEvent(JSON.parse(e.data)));
  es.onopen = () => {
    streamState.textContent = "live";
    if (onOpen) onOpen();
  };
  es.onerror = () => (streamState.textContent = "reconnecting…");
  onLeave(() => es.close());
  return es;
}

// The status a person cares about: a running task's session status (from
// its hooks: busy, idle, needs input), else the task's own.
function shownStatus(task, session) {
  if (task.status === "running" && session && session.status && session.status !== "unknown") {
    return session.status;
  }
  return task.status;
}

function badge(status) {
  const label = status === "needs_input" ? "needs input" : status;
  return el("span", { class: `badge s-${status}` }, label);
}

// ---- the board ---------------------------------------------------------

async function boardPage() {
  document.title = "Parhelia: sessions";
  const state = { status: "", backend: "", text: "" };
  const statusSel = el(
    "select",
    { "aria-label": "Filter by status", onchange: (e) => ((state.status = e.target.value), render()) },
    ...["", "busy", "idle", "needs_input", "pending", "running", "completed", "failed", "cancelled", "interrupted"].map((s) =>
      el("option", { value: s }, s === "" ? "every status" : s.replace("_", " ")),
    ),
  );
  const backendSel = el(
    "select",
    { "aria-label": "Filter by backend", onchange: (e) => ((state.backend = e.target.value), render()) },
    el("option", { value: "" }, "every backend"),
    el("option", { value: "local" }, "local"),
    el("option", { value: "modal" }, "modal"),
  );
  const search = el("input", {
    type: "search",
    placeholder: "search prompts and ids",
    "aria-label": "Search prompts and ids",
    oninput: (e) => ((state.text = e.target.value.toLowerCase()), render()),
  });
  const count = el("span", { class: "muted", id: "board-count" });
  const body = el("tbody");
  const table = el(
    "table",
    { class: "board", "aria-label": "Sessions" },
    el(
      "thead",
      {},
      el("tr", {}, ...["Task", "Prompt", "Status", "Backend", "GPU", "Age", "Cost"].map((h) => el("th", { scope: "col" }, h))),
    ),
    body,
  );
  const problem = el("div");
  main.replaceChildren(
    el("h1", {}, "Sessions"),
    el("div", { class: "row filters" }, statusSel, backendSel, search, count),
    problem,
    table,
  );

  let tasks = [];
  let sessions = new Map();
  function render() {
    const rows = tasks.filter((t) => {
      const s = shownStatus(t, sessions.get(t.session_id));
      if (state.status && s !== state.status && t.status !== state.status) return false;
      if (state.backend && t.backend !== state.backend) return false;
      if (state.text && !`${t.id} ${t.prompt}`.toLowerCase().includes(state.text)) return false;
      return true;
    });
    count.textContent = `${rows.length} of ${tasks.length}`;
    body.replaceChildren(
      ...rows.map((t) => {
        const s = shownStatus(t, sessions.get(t.session_id));
        return el(
          "tr",
          { "data-task": t.id, "data-status": s },
          el("td", {}, el("a", { href: `#/task/${encodeURIComponent(t.id)}`, "aria-label": `Open task ${t.id}` }, t.id)),
          el("td", { class: "prompt-cell" }, el("div", { class: "prompt", title: t.prompt }, t.prompt)),
          el("td", {}, badge(s)),
          el("td", {}, t.backend),
          el("td", {}, t.gpu_chosen || "-"),
          el("td", { title: t.created_at }, age(t.created_at)),
          el("td", { class: "num", "data-cost": t.cost_usd }, usd(t.cost_usd)),
        );
      }),
    );
  }
  async function refresh() {
    try {
      const [t, s] = await Promise.all([api("parhelia_task_list"), api("parhelia_session_list")]);
      tasks = t.tasks;
      sessions = new Map(s.sessions.map((x) => [x.id, x]));
      problem.replaceChildren();
      render();
    } catch (err) {
      problem.replaceChildren(errorBox(err));
    }
  }
  // Reloaded when the stream opens too: events recorded between the first
  // read and the stream's start (or while it reconnected) are then not lost.
  const later = debounce(refresh, 100);
  follow({}, later, later);
  await refresh();
}

// ---- a task's page -----------------------------------------------------

async function taskPage(taskId) {
  document.title = `Parhelia: ${taskId}`;
  main.replaceChildren(el("p", { class: "muted" }, "loading…"));
  let task;
  try {
    task = await api("parhelia_task_show", { task_id: taskId });
  } catch (err) {
    main.replaceChildren(el("p", {}, el("a", { href: "#/" }, "← all sessions")), errorBox(err));
    return;
  }
  const header = el("section", { "aria-label": "Task" });
  const actions = el("div", { class: "row", role: "group", "aria-label": "Actions" });
  const actionResult = el("div", { role: "status" });
  const events = el("ul");
  const eventsBox = el("div", { class: "events", tabindex: "0", "aria-label": "Events" }, events);
  const chart = el("div", { class: "chart" });
  const timeline = el("div", { class: "timeline" });
  const diff = el("div", { class: "diff", "aria-live": "polite" });
  const terminalBox = el("div");
  main.replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "← all sessions")),
    header,
    el("section", { "aria-labelledby": "h-actions" }, el("h2", { id: "h-actions" }, "Actions"), actions, actionResult),
    el(
      "div",
      { class: "grid" },
      el("section", { "aria-labelledby": "h-events" }, el("h2", { id: "h-events" }, "Events"), eventsBox),
      el("section", { "aria-labelledby": "h-spend" }, el("h2", { id: "h-spend" }, "Spend"), chart),
    ),
    el(
      "section",
      { "aria-labelledby": "h-checkpoints" },
      el("h2", { id: "h-checkpoints" }, "Checkpoints"),
      el("p", { class: "muted" }, "Choose two to compare them."),
      timeline,
      diff,
    ),
    el("section", { "aria-labelledby": "h-terminal" }, el("h2", { id: "h-terminal" }, "Terminal"), terminalBox),
  );

  let session = null;
  async function refreshTask() {
    try {
      task = await api("parhelia_task_show", { task_id: taskId });
      session = task.session_id ? await api("parhelia_session_show", { session_id: task.session_id }) : null;
    } catch (err) {
      header.replaceChildren(errorBox(err));
      return;
    }
    const s = shownStatus(task, session);
    header.replaceChildren(
      el("h1", {}, task.id, " ", badge(s)),
      el("p", { class: "prompt-full" }, task.prompt),
      el(
        "dl",
        { class: "facts" },
        el("dt", {}, "session"),
        el("dd", {}, task.session_id || "-"),
        el("dt", {}, "backend"),
        el("dd", {}, task.backend, task.gpu_chosen ? ` (GPU ${task.gpu_chosen})` : ""),
        el("dt", {}, "cost"),
        el("dd", { id: "task-cost", "data-cost": task.cost_usd }, usd(task.cost_usd)),
        el("dt", {}, "created"),
        el("dd", {}, task.created_at),
        task.error_code ? el("dt", {}, "error") : null,
        task.error_code ? el("dd", { class: "error" }, `${task.error_code}: ${task.error_message || ""}`) : null,
      ),
    );
    renderActions();
  }

  function act(label, tool, args, question, danger) {
    return el(
      "button",
      {
        class: danger ? "danger" : undefined,
        "aria-label": label,
        onclick: async () => {
          if (question && !(await confirmAction(question, label))) return;
          actionResult.replaceChildren(el("span", { class: "muted" }, `${label}…`));
          try {
            const result = await api(tool, { ...args(), ...(danger ? { confirm: true } : {}) });
            actionResult.replaceChildren(el("span", {}, `${label}: done`), el("pre", { class: "muted" }, JSON.stringify(result, null, 1).slice(0, 2000)));
            refreshAll();
          } catch (err) {
            actionResult.replaceChildren(errorBox(err));
          }
        },
      },
      label,
    );
  }

  function renderActions() {
    const sid = task.session_id;
    const running = task.status === "running";
    const message = el("input", { type: "text", placeholder: "message to Claude", "aria-label": "Message to send", size: 40 });
    const send = el("form", {
      class: "row",
      onsubmit: async (e) => {
        e.preventDefault();
        if (!message.value.trim()) return;
        try {
          await api("parhelia_session_send", { session_id: sid, text: message.value });
          actionResult.replaceChildren(el("span", {}, "sent"));
          message.value = "";
        } catch (err) {
          actionResult.replaceChildren(errorBox(err));
        }
      },
    });
    send.append(message, el("button", { type: "submit", "aria-label": "Send message", disabled: !running || !sid }, "Send"));
    actions.replaceChildren(
      ...[
      send,
      running ? act("Cancel", "parhelia_task_cancel", () => ({ task_id: task.id }), `Stop task ${task.id}? A final checkpoint is taken; it can be resumed.`, true) : null,
      sid && !running
        ? act("Resume", "parhelia_resume", () => ({ session_id: sid }), `Resume session ${sid} on a fresh container from its latest checkpoint?`, false)
        : null,
      sid ? act("Pull", "parhelia_session_pull", () => ({ session_id: sid }), `Bring session ${sid}'s result back as a local git branch (parhelia/${sid})?`, false) : null,
      ].filter(Boolean),
    );
  }

  // Events: the stored ones, then new ones as they are recorded. A stream that
  // reopens (the dashboard's server restarted) sends the history again: each
  // event is shown once, by its source and id (ids are never reused).
  const shown = new Set();
  follow({ task: taskId, history: "1" }, (ev) => {
    const key = `${ev.source}:${ev.id}`;
    if (shown.has(key)) return;
    shown.add(key);
    const li = el(
      "li",
      { class: `ev-${ev.level}`, "data-type": ev.type },
      el("span", { class: "ev-type" }, `${ev.time.slice(11, 19)} ${ev.type}`),
      ev.message,
    );
    const atBottom = eventsBox.scrollTop + eventsBox.clientHeight >= eventsBox.scrollHeight - 4;
    events.append(li);
    while (events.childElementCount > 2000) events.firstChild.remove();
    if (atBottom) eventsBox.scrollTop = eventsBox.scrollHeight;
    onEventChanges();
  });

  async function refreshSpend() {
    try {
      drawSpend(chart, await api("parhelia_task_spend", { task_id: taskId }));
    } catch (err) {
      chart.replaceChildren(errorBox(err));
    }
  }

  let chosen = [];
  async function refreshCheckpoints() {
    if (!task.session_id) {
      timeline.replaceChildren(el("p", { class: "muted" }, "no session yet"));
      return;
    }
    let list;
    try {
      list = (await api("parhelia_checkpoint_list", { session_id: task.session_id })).checkpoints;
    } catch (err) {
      timeline.replaceChildren(errorBox(err));
      return;
    }
    chosen = chosen.filter((id) => list.some((c) => c.id === id));
    timeline.replaceChildren(
      el(
        "ol",
        { "aria-label": "Checkpoints, oldest first" },
        ...list.map((c) => {
          const box = el("input", {
            type: "checkbox",
            "aria-label": `Choose checkpoint ${c.id} to compare`,
            checked: chosen.includes(c.id),
            onchange: (e) => {
              if (e.target.checked) chosen = [...chosen, c.id].slice(-2);
              else chosen = chosen.filter((x) => x !== c.id);
              refreshCheckpoints();
              showDiff(list);
            },
          });
          return el(
            "li",
            { "data-checkpoint": c.id },
            box,
            el("code", {}, c.id),
            el("span", { class: "badge" }, c.trigger),
            el("span", { class: "muted" }, `${c.created_at.slice(11, 19)} · ${c.file_count} files · ${bytes(c.total_bytes)} · +${bytes(c.new_bytes)} new`),
            el("span", { class: "changed muted", "data-changed-of": c.id }, changedText(c)),
            c.damaged ? el("span", { class: "error" }, `damaged: ${c.damaged}`) : null,
            act(
              "Roll back",
              "parhelia_checkpoint_restore",
              () => ({ checkpoint_id: c.id }),
              `Roll the session's workspace and conversation back to ${c.id}? The current state is checkpointed first, so this can be undone.`,
              true,
            ),
          );
        }),
      ),
    );
    fillChanged(list);
  }

  // Files changed since each checkpoint's parent (`checkpoint diff PARENT ID`), for
  // the newest CHANGED_SHOWN checkpoints, asked one at a time and kept (a stored
  // checkpoint never changes).
  const CHANGED_SHOWN = 30;
  const changedCache = new Map();
  function changedText(c) {
    const n = changedCache.get(c.id);
    if (n === undefined) return c.parent ? "" : "· first";
    return typeof n === "number" ? `· ${n} files changed` : `· ${n}`;
  }
  async function fillChanged(list) {
    const ids = new Set(list.map((c) => c.id));
    for (const c of list.slice(-CHANGED_SHOWN).reverse()) {
      if (!c.parent || changedCache.has(c.id) || !ids.has(c.parent)) continue;
      try {
        const d = await api("parhelia_checkpoint_diff", { a: c.parent, b: c.id });
        changedCache.set(c.id, ["added", "modified", "removed"].reduce((n, k) => n + (Array.isArray(d[k]) ? d[k].length : 0), 0));
      } catch (err) {
        changedCache.set(c.id, err.code ? `changes unknown (${err.code})` : "changes unknown");
      }
      const span = timeline.querySelector(`[data-changed-of="${CSS.escape(c.id)}"]`);
      if (span) span.textContent = changedText(c);
    }
  }

  async function showDiff(list) {
    if (chosen.length !== 2) {
      diff.replaceChildren();
      return;
    }
    // Older first, whichever order they were chosen in.
    const order = (id) => list.findIndex((c) => c.id === id);
    const [a, b] = [...chosen].sort((x, y) => order(x) - order(y));
    diff.replaceChildren(el("p", { class: "muted" }, `comparing ${a} → ${b}…`));
    try {
      const [files, turns] = await Promise.all([
        api("parhelia_checkpoint_diff", { a, b }),
        api("parhelia_checkpoint_diff", { a, b, conversation: true }),
      ]);
      diff.replaceChildren(el("h3", {}, `${a} → ${b}`), renderFileDiff(files, a, b), renderTurns(turns));
    } catch (err) {
      diff.replaceChildren(errorBox(err));
    }
  }

  function renderFileDiff(files, a, b) {
    const lists = [];
    for (const key of ["added", "modified", "changed", "removed"]) {
      const entries = files[key];
      if (!Array.isArray(entries)) continue;
      lists.push(
        el("h4", {}, `${key} (${entries.length})`),
        el(
          "ul",
          { "aria-label": `Files ${key}` },
          ...entries.map((e) => {
            const path = typeof e === "string" ? e : e.path;
            const li = el("li", { "data-path": path }, el("code", {}, path));
            if (key !== "removed" && key !== "added") {
              li.append(
                " ",
                el(
                  "button",
                  {
                    "aria-label": `Show the diff of ${path}`,
                    onclick: async () => {
                      try {
                        const d = await api("parhelia_checkpoint_diff", { a, b, file: path });
                        li.append(el("pre", {}, d.unified_diff ?? JSON.stringify(d, null, 1)));
                      } catch (err) {
                        li.append(errorBox(err));
                      }
                    },
                  },
                  "diff",
                ),
              );
            }
            return li;
          }),
        ),
      );
    }
    return el("div", { class: "file-diff" }, ...lists);
  }

  function renderTurns(turns) {
    const list = Array.isArray(turns) ? turns : turns.turns || [];
    return el(
      "div",
      { class: "turns" },
      el("h4", {}, `conversation (${list.length} turns)`),
      ...list.map((t) => el("pre", {}, `${t.role || t.type || ""}: ${t.text ?? JSON.stringify(t)}`)),
    );
  }

  const onEventChanges = debounce(() => refreshAll(), 200);
  async function refreshAll() {
    await refreshTask();
    await Promise.all([refreshSpend(), refreshCheckpoints()]);
  }

  await refreshAll();
  setupTerminal(terminalBox, () => task, () => session);
}

// A line chart: cumulative total, compute and model over time, and the
// task's ceiling as a dashed line. Points are the ledger's running totals.
function drawSpend(box, series) {
  const pts = series.points;
  const legend = el(
    "div",
    { class: "legend muted" },
    el("span", { class: "l-total" }, `— total ${usd(series.spend.cost_usd)}`),
    el("span", { class: "l-compute" }, `— compute ${usd(series.spend.compute_usd)}`),
    el("span", { class: "l-model" }, `— model ${usd(series.spend.model_usd)}`),
    el("span", { class: "l-ceiling" }, series.ceiling_usd != null ? `- - ceiling ${usd(series.ceiling_usd)}` : "no ceiling (--max-cost)"),
  );
  if (!pts.length) {
    box.replaceChildren(legend, el("p", { class: "muted", id: "spend-last", "data-total": 0 }, "no spend recorded yet"));
    return;
  }
  const W = 600;
  const H = 220;
  const pad = 36;
  const t0 = pts[0].ts_ms;
  const t1 = Math.max(pts[pts.length - 1].ts_ms, t0 + 1);
  const top = Math.max(series.ceiling_usd ?? 0, ...pts.map((p) => p.total_usd), 1e-9);
  const x = (t) => pad + ((t - t0) / (t1 - t0)) * (W - 2 * pad);
  const y = (v) => H - pad - (v / top) * (H - 2 * pad);
  const line = (key, cls) =>
    svg("polyline", {
      points: pts.map((p) => `${x(p.ts_ms).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "),
      fill: "none",
      stroke: "currentColor",
      "stroke-width": key === "total_usd" ? 2.5 : 1.5,
      class: cls,
    });
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Spend over time: ${usd(series.spend.cost_usd)} so far` });
  chart.append(
    svg("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: "currentColor", "stroke-opacity": 0.3 }),
    svg("line", { x1: pad, y1: pad, x2: pad, y2: H - pad, stroke: "currentColor", "stroke-opacity": 0.3 }),
  );
  const label = (text, lx, ly, anchor) => {
    const t = svg("text", { x: lx, y: ly, "font-size": 11, fill: "currentColor", "text-anchor": anchor });
    t.textContent = text;
    return t;
  };
  chart.append(label(usd(top), pad - 4, pad + 4, "end"), label("$0", pad - 4, H - pad, "end"));
  chart.append(label(new Date(t0).toLocaleTimeString(), pad, H - pad + 16, "start"), label(new Date(t1).toLocaleTimeString(), W - pad, H - pad + 16, "end"));
  if (series.ceiling_usd != null) {
    chart.append(
      svg("line", { x1: pad, x2: W - pad, y1: y(series.ceiling_usd), y2: y(series.ceiling_usd), stroke: "currentColor", "stroke-dasharray": "6 4", class: "l-ceiling" }),
    );
  }
  chart.append(line("compute_usd", "l-compute"), line("model_usd", "l-model"), line("total_usd", "l-total"));
  const last = pts[pts.length - 1];
  box.replaceChildren(
    legend,
    chart,
    el("p", { class: "muted", id: "spend-last", "data-total": last.total_usd }, `last point ${usd(last.total_usd)} at ${last.at}${series.thinned ? ` (${pts.length} of ${series.rows} ledger rows drawn)` : ""}`),
  );
}

// The terminal: xterm.js on the attach WebSocket, read-only until the
// person allows typing.
function setupTerminal(box, getTask, getSession) {
  const session = getSession();
  if (!session) {
    box.replaceChildren(el("p", { class: "muted" }, "no session yet"));
    return;
  }
  if (session.mode !== "interactive") {
    box.replaceChildren(el("p", { class: "muted" }, "a headless session has no terminal: its events above show what it does"));
    return;
  }
  const allow = el("input", { type: "checkbox", id: "allow-typing" });
  const status = el("span", { class: "muted", role: "status" }, "read-only");
  const connect = el("button", { "aria-label": "Connect the terminal" }, "Connect");
  const screen = el("div", { class: "term", role: "region", "aria-label": "Session terminal" });
  box.replaceChildren(
    el("div", { class: "row" }, connect, el("label", { for: "allow-typing" }, allow, " allow typing (keys reach the session)"), status),
    screen,
  );
  let term = null;
  let ws = null;
  function size() {
    // One cell of a 14px monospace font, measured, gives the columns and rows that fit.
    const probe = el("span", { class: "xterm" }, "W".repeat(10));
    probe.style.position = "absolute";
    probe.style.visibility = "hidden";
    probe.style.fontFamily = "monospace";
    probe.style.fontSize = "14px";
    document.body.append(probe);
    const cw = probe.getBoundingClientRect().width / 10 || 8;
    probe.remove();
    const cols = Math.max(20, Math.min(300, Math.floor((screen.clientWidth - 8) / cw)));
    return { cols, rows: 24 };
  }
  function open() {
    if (ws) ws.close();
    if (!term) {
      const { cols, rows } = size();
      term = new Terminal({ cols, rows, fontSize: 14, fontFamily: "monospace", disableStdin: false, convertEol: false });
      term.open(screen);
      term.onData((data) => {
        if (allow.checked && ws && ws.readyState === WebSocket.OPEN) ws.send(new TextEncoder().encode(data));
      });
      onLeave(() => term && term.dispose());
    }
    const params = new URLSearchParams({ cols: term.cols, rows: term.rows });
    if (allow.checked) params.set("write", "1");
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const sock = new WebSocket(`${proto}://${location.host}/api/attach/${encodeURIComponent(session.id)}?${params}`);
    ws = sock;
    sock.binaryType = "arraybuffer";
    status.textContent = "connecting…";
    sock.onopen = () => {
      if (sock === ws) status.textContent = allow.checked ? "attached (typing allowed)" : "attached (read-only)";
    };
    sock.onmessage = (m) => {
      if (sock !== ws) return;
      if (typeof m.data === "string") {
        const msg = JSON.parse(m.data);
        if (msg.type === "ended") status.textContent = `ended: ${msg.reason}`;
        if (msg.type === "error") status.textContent = `error: ${msg.error.code ? msg.error.code + " " : ""}${msg.error.message}`;
        return;
      }
      term.write(new Uint8Array(m.data));
    };
    sock.onclose = () => {
      if (sock === ws && status.textContent.startsWith("attached")) status.textContent = "disconnected";
    };
    onLeave(() => sock.close());
  }
  connect.addEventListener("click", open);
  // Typing needs a connection opened with write=1: reconnect when it changes.
  allow.addEventListener("change", () => ws && open());
  const resized = debounce(() => {
    if (!term || !ws || ws.readyState !== WebSocket.OPEN) return;
    const { cols } = size();
    if (cols !== term.cols) {
      term.resize(cols, term.rows);
      ws.send(JSON.stringify({ type: "resize", cols, rows: term.rows }));
    }
  }, 150);
  window.addEventListener("resize", resized);
  onLeave(() => window.removeEventListener("resize", resized));
}

function route() {
  for (const fn of teardown) {
    try {
      fn();
    } catch {}
  }
  teardown = [];
  const m = location.hash.match(/^#\/task\/([^/]+)$/);
  if (m) taskPage(decodeURIComponent(m[1]));
  else boardPage();
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();
