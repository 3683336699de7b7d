// Taskengine dashboard: plain JavaScript, no build step.
// Every piece of data is put on the page as text (textContent, text nodes): never as HTML.
"use strict";

const CREDENTIALS = "taskengine.dashboard";
const DIALECTS = {
  taskengine: "Task Engine API jobs",
  tasks: "scheduled-task runs",
  worktasks: "work tasks",
  drove: "Drove tasks",
};
const STATES = [
  "scheduled", "queued", "admitted", "running", "retry_wait", "paused",
  "succeeded", "failed", "timed_out", "cancelled", "broken",
];
const WAITING = ["queued", "scheduled", "retry_wait", "paused"];
const RUNNING = ["admitted", "running"];

// --- the DOM, as text only --------------------------------------------------------------------

/** An element with properties (`class`, `for`, attributes, `on*` handlers) and children:
 *  strings and numbers become text nodes. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      node.className = value;
    } else if (name === "value") {
      node.value = value;
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

function showError(error) {
  $("error-text").textContent = error instanceof Error ? error.message : String(error);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

// --- credentials and the API ------------------------------------------------------------------

function credentials() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(CREDENTIALS) || "null");
    return saved && saved.client && saved.key ? saved : null;
  } catch {
    return null;
  }
}

class ApiError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
}

/** The error's message from any dialect's error body. */
function errorMessage(body, fallback) {
  if (body && typeof body === "object") {
    for (const name of ["error", "message", "detail", "reason"]) {
      if (typeof body[name] === "string" && body[name]) return body[name];
    }
    return JSON.stringify(body);
  }
  return fallback;
}

async function api(path, { method = "GET", body, signedIn = credentials() } = {}) {
  if (!signedIn) throw new ApiError(401, "not signed in");
  const headers = { client: signedIn.client, "api-key": signedIn.key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (error) {
    throw new Error(`${method} ${path}: the gateway did not answer (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    throw new ApiError(response.status, errorMessage(data, response.statusText || "error"));
  }
  return data;
}

// --- signing in and out -----------------------------------------------------------------------

let me = null;

async function signIn(event) {
  event.preventDefault();
  clearError();
  const tried = { client: $("client-name").value.trim(), key: $("api-key").value };
  try {
    me = await api("/ui/api/me", { signedIn: tried });
  } catch (error) {
    showError(`Sign-in failed: ${error.message}`);
    return;
  }
  sessionStorage.setItem(CREDENTIALS, JSON.stringify(tried));
  $("api-key").value = "";
  start();
}

function signOut() {
  sessionStorage.removeItem(CREDENTIALS);
  me = null;
  live.stop();
  clearError();
  $("view").replaceChildren();
  showSignIn();
}

function showSignIn() {
  $("sign-in").hidden = false;
  $("view").hidden = true;
  $("nav").hidden = true;
  $("who").hidden = true;
}

async function start() {
  if (!me) {
    try {
      me = await api("/ui/api/me");
    } catch (error) {
      if (error.status === 401) sessionStorage.removeItem(CREDENTIALS);
      showSignIn();
      showError(`Sign-in failed: ${error.message}`);
      return;
    }
  }
  $("sign-in").hidden = true;
  $("view").hidden = false;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("signed-in-as").textContent = me.admin ? `${me.client} (admin: all clients)` : me.client;
  live.start();
  route();
}

// --- live updates -----------------------------------------------------------------------------

const live = {
  socket: null,
  retry: 1000,
  stopped: true,
  timer: null,

  start() {
    this.stopped = false;
    this.connect();
  },

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close();
    this.socket = null;
    this.show("offline", false);
  },

  show(text, on) {
    $("live").textContent = text;
    $("live").className = on ? "live on" : "live off";
  },

  connect() {
    const signedIn = credentials();
    if (!signedIn || this.stopped) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ui/ws`);
    this.socket = socket;
    this.show("connecting", false);
    // The key goes in the first message, never in the URL.
    socket.addEventListener("open", () => socket.send(JSON.stringify(signedIn)));
    socket.addEventListener("message", (message) => {
      let update;
      try {
        update = JSON.parse(message.data);
      } catch {
        return;
      }
      if (update.type === "ready") {
        this.retry = 1000;
        this.show("live", true);
        refreshSoon(); // what happened before the socket followed the bus
      } else if (update.type === "job" || update.type === "callback") {
        view.onUpdate(update);
      }
    });
    socket.addEventListener("close", (closed) => {
      if (this.socket !== socket) return;
      this.socket = null;
      const why = closed.reason ? `: ${closed.reason}` : "";
      this.show(`offline (${closed.code}${why})`, false);
      if (this.stopped) return;
      if (closed.code === 4401 || closed.code === 4400) {
        showError(`Live updates refused (${closed.code}${why})`);
        return;
      }
      if (closed.code === 4429) showError(`Live updates refused (${closed.code}${why})`);
      this.timer = setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 30000);
    });
  },
};

let refreshTimer = null;

/** Refreshes the view shortly: many updates in a burst cost one read. */
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    view.refresh().catch(showError);
  }, 200);
}

// --- views ------------------------------------------------------------------------------------

let view = { refresh: async () => {}, onUpdate: () => {} };

function route() {
  if (!me) return;
  const hash = location.hash || "#/";
  const job = hash.match(/^#\/jobs\/(\d{1,18})$/);
  let next;
  if (job) next = jobView(job[1]);
  else if (hash === "#/jobs") next = jobsView();
  else if (hash === "#/tasks") next = tasksView();
  else next = queuesView();
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", hash.startsWith(link.getAttribute("href")) &&
      (link.getAttribute("href") !== "#/" || hash === "#/"));
  }
  view = next;
  $("view").replaceChildren(next.node);
  next.refresh().catch(showError);
}

function table(headings, rows, empty) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headings.length, class: "empty" }, empty))));
}

function stateBadge(state) {
  return el("span", { class: `state state-${state}`, "data-state": state }, state);
}

function when(stamp) {
  return stamp ? stamp.replace("T", " ").replace(/\.\d+Z$/, "Z") : "—";
}

function queuesView() {
  const body = el("div");
  const node = el("div", {}, el("h2", {}, "Queues and admission"), body);
  return {
    node,
    async refresh() {
      const queues = await api("/ui/api/queues");
      const sum = (states) => queues.priorities.reduce(
        (n, row) => n + states.reduce((m, s) => m + (row[s] || 0), 0), 0);
      const running = sum(RUNNING);
      const rows = queues.priorities.map((row) => el("tr", {},
        el("td", {}, row.priority),
        el("td", {}, (row.admitted || 0) + (row.running || 0)),
        el("td", {}, row.queued || 0),
        el("td", {}, row.scheduled || 0),
        el("td", {}, row.retry_wait || 0),
        el("td", {}, row.paused || 0)));
      body.replaceChildren(
        el("dl", { class: "facts" },
          el("dt", {}, "jobs of"), el("dd", {}, queues.scope),
          el("dt", {}, "running"), el("dd", { id: "running" }, `${running} of max_jobs ${queues.max_jobs}`),
          el("dt", {}, "waiting"), el("dd", { id: "waiting" }, sum(WAITING)),
          el("dt", {}, "priority_slots"),
          el("dd", {}, `${queues.priority_slots} reserved for priority ≤ ${queues.priority_threshold}`)),
        el("h3", {}, "By priority (1 highest)"),
        table(["priority", "running", "queued", "scheduled", "retry wait", "paused"], rows,
          "nothing running or waiting"));
    },
    onUpdate(update) {
      if (update.type === "job") refreshSoon();
    },
  };
}

function jobsView() {
  const filters = {
    dialect: el("select", { name: "dialect", onchange: () => refreshSoon() },
      el("option", { value: "" }, "all dialects"),
      Object.entries(DIALECTS).map(([value, label]) => el("option", { value }, label))),
    state: el("select", { name: "state", onchange: () => refreshSoon() },
      el("option", { value: "" }, "any state"),
      STATES.map((state) => el("option", { value: state }, state))),
    search: el("input", { name: "search", type: "search", placeholder: "text in parameters",
      maxlength: 200, onchange: () => refreshSoon() }),
    client: me.admin
      ? el("input", { name: "client", placeholder: "any client", onchange: () => refreshSoon() })
      : null,
  };
  const list = el("div", { id: "jobs" });
  const submitted = el("span", { class: "note", id: "submitted" });
  const workflow = el("input", { name: "workflow", value: "echo", required: true });
  const parameters = el("textarea", { name: "parameters", rows: 2 }, '{"message": "hello"}');
  const priority = el("input", { name: "priority", type: "number", min: 1, max: 10, value: 5 });

  async function submit(event) {
    event.preventDefault();
    clearError();
    let given;
    try {
      given = parameters.value.trim() ? JSON.parse(parameters.value) : {};
    } catch (error) {
      showError(`parameters must be JSON: ${error.message}`);
      return;
    }
    try {
      const accepted = await api("/job", {
        method: "POST",
        body: { job: { workflow: workflow.value }, parameters: given, priority: Number(priority.value) },
      });
      submitted.replaceChildren("submitted ",
        el("a", { href: `#/jobs/${accepted.id}`, "data-submitted": accepted.id }, `job ${accepted.id}`));
      await node.refresh();
    } catch (error) {
      showError(`Submit failed: ${error.message}`);
    }
  }

  const node = el("div", {},
    el("h2", {}, "Jobs"),
    el("form", { id: "submit-job", class: "inline", onsubmit: submit },
      el("strong", {}, "Submit a job (Task Engine API)"),
      el("label", {}, "workflow ", workflow),
      el("label", {}, "parameters ", parameters),
      el("label", {}, "priority ", priority),
      el("button", { type: "submit" }, "Submit"),
      submitted),
    el("form", { id: "filters", class: "inline", onsubmit: (e) => { e.preventDefault(); refreshSoon(); } },
      el("strong", {}, "Filter"),
      Object.values(filters).filter(Boolean)),
    list);

  node.refresh = async () => {
    const query = new URLSearchParams({ limit: "100" });
    for (const [name, input] of Object.entries(filters)) {
      if (input && input.value.trim()) query.set(name, input.value.trim());
    }
    const jobs = await api(`/ui/api/jobs?${query}`);
    const rows = jobs.map((job) => el("tr", { "data-job": job.id },
      el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.id)),
      el("td", {}, DIALECTS[job.dialect] || job.dialect),
      el("td", {}, job.client),
      el("td", {}, job.workflow),
      el("td", {}, stateBadge(job.state)),
      el("td", {}, job.priority),
      el("td", {}, job.attempt),
      el("td", {}, when(job.created_at)),
      el("td", {}, when(job.updated_at))));
    list.replaceChildren(table(
      ["job", "dialect", "client", "workflow", "state", "priority", "attempt", "created", "updated"],
      rows, "no jobs match"));
  };
  return {
    node,
    refresh: () => node.refresh(),
    onUpdate(update) {
      if (update.type !== "job") return;
      // Show the new state at once; the refresh brings the rest (and new jobs).
      const cell = list.querySelector(`tr[data-job="${update.job_id}"] [data-state]`);
      if (cell) cell.replaceWith(stateBadge(update.state));
      refreshSoon();
    },
  };
}

function jobView(id) {
  const body = el("div");
  const node = el("div", {}, el("p", {}, el("a", { href: "#/jobs" }, "← jobs")),
    el("h2", {}, `Job ${id}`), body);
  return {
    node,
    async refresh() {
      const found = await api(`/ui/api/jobs/${id}`);
      const job = found.job;
      const facts = [
        ["state", stateBadge(job.state)],
        ["status in its dialect", job.native_status],
        ["dialect", DIALECTS[job.dialect] || job.dialect],
        ["client", job.client],
        ["workflow", job.workflow],
        ["priority", job.priority],
        ["attempt", job.attempt],
        ["created", when(job.created_at)],
        ["run at", when(job.run_at)],
        ["started", when(job.started_at)],
        ["finished", when(job.finished_at)],
      ];
      if (job.failure) facts.push(["failure", job.failure]);
      if (job.exit_code !== null) facts.push(["exit code", job.exit_code]);
      if (job.task_id) facts.push(["scheduled task", job.task_id]);
      if (job.drove_task) facts.push(["Drove taskId", job.drove_task]);
      const events = found.events.map((event) => el("tr", { "data-event": event.type },
        el("td", {}, when(event.at)),
        el("td", {}, event.type),
        el("td", {}, Object.entries(event.details).map(
          ([name, value]) => el("span", { class: "detail" }, `${name}: ${typeof value === "object" ? JSON.stringify(value) : value}`)))));
      const output = found.log.map((line) => `${when(line.at)} [${line.source}${line.step ? ` step ${line.step}` : ""}] ${line.severity} ${line.message}`);
      const callbacks = found.callbacks.map((callback) => el("tr", {},
        el("td", {}, callback.event),
        el("td", {}, callback.url),
        el("td", {}, callback.delivered === null ? "pending" : `delivered (${callback.delivered})`),
        el("td", {}, callback.attempts.map((a) => el("div", {},
          `${when(a.at)} ${a.status_code !== undefined ? a.status_code : a.error}`)))));
      body.replaceChildren(
        el("dl", { class: "facts" }, facts.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)])),
        el("h3", {}, "Parameters"),
        el("pre", { class: "parameters" }, JSON.stringify(job.parameters, null, 2)),
        el("h3", {}, "Timeline (stored events)"),
        table(["at", "event", "details"], events, "no events"),
        el("h3", {}, "Output"),
        el("pre", { id: "output", class: "output" }, output.length ? output.join("\n") : "(none yet)"),
        el("h3", {}, "Callbacks"),
        el("div", { id: "callbacks" },
          table(["for", "URL", "delivery", "attempts"], callbacks, "none asked for")));
    },
    onUpdate(update) {
      if (String(update.job_id) === String(id)) refreshSoon();
    },
  };
}

function tasksView() {
  const body = el("div");
  const node = el("div", {}, el("h2", {}, "Scheduled tasks"), body);
  return {
    node,
    async refresh() {
      const tasks = await api("/ui/api/tasks?limit=200");
      const rows = tasks.map((task) => el("tr", { "data-task": task.id },
        el("td", {}, task.title),
        el("td", {}, task.client),
        el("td", {}, task.schedule_kind),
        el("td", {}, task.schedule_expr || "—"),
        el("td", {}, task.timezone),
        el("td", {}, task.status),
        el("td", { class: "next-fire" }, when(task.next_run_at)),
        el("td", {}, when(task.last_run_at)),
        el("td", {}, task.run_count)));
      body.replaceChildren(table(
        ["title", "client", "kind", "schedule", "timezone", "status", "next fire", "last fire", "runs"],
        rows, "no scheduled tasks"));
    },
    onUpdate(update) {
      if (update.type === "job") refreshSoon();
    },
  };
}

// --- start ------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("error-close").addEventListener("click", clearError);
  window.addEventListener("hashchange", route);
  if (credentials()) start();
  else showSignIn();
});
