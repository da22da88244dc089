// baton console: a client of the V1 API like any other, on the server's own origin.
// The agent key and the admin token live in this tab's sessionStorage only (never in
// a URL); every call sends them as a bearer header. Markdown is rendered by marked and
// sanitized by DOMPurify (both vendored beside this file); everything else is put in
// the page as text, never as markup.

const STATUSES = ["running", "requires_action", "completed", "failed", "cancelled"];
const ENDS = new Set(["final", "failed", "cancelled", "requires_action"]);
const main = document.getElementById("main");

// ---- Session --------------------------------------------------------------------

const session = {
  get key() { return sessionStorage.getItem("baton.key"); },
  get agent() { return JSON.parse(sessionStorage.getItem("baton.agent") ?? "null"); },
  get admin() { return sessionStorage.getItem("baton.admin"); },
  signInAgent(key, agent) {
    sessionStorage.setItem("baton.key", key);
    sessionStorage.setItem("baton.agent", JSON.stringify(agent));
  },
  signInAdmin(token) { sessionStorage.setItem("baton.admin", token); },
  signOut() { sessionStorage.clear(); },
};

// ---- DOM helpers ----------------------------------------------------------------

/** An element with attributes (`on…` are listeners) and children (strings are text). */
function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status.replace("_", " "));
}

function when(timestamp) {
  if (!timestamp) return "—";
  return h("time", { datetime: timestamp, title: timestamp }, new Date(timestamp).toLocaleString());
}

function duration(from, to) {
  if (!from) return "—";
  const ms = (to ? new Date(to) : new Date()) - new Date(from);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function json(value) {
  return h("pre", { class: "mono" }, JSON.stringify(value, null, 2));
}

function announce(text) {
  document.getElementById("announcer").textContent = text;
}

/** An error box for a failed call: its code, message and request id. */
function problem(error) {
  const box = h("div", { class: "error", role: "alert" });
  if (error instanceof ApiFailure) {
    append(box, [h("strong", {}, `${error.status} ${error.error.code}`), ": ", error.error.message ?? ""]);
    if (error.error.active_turn) append(box, [` (turn ${error.error.active_turn.turn_id} is running)`]);
    if (error.error.fields) append(box, [h("ul", {}, error.error.fields.map((f) => h("li", {}, `${f.field}: ${f.reason}`)))]);
  } else {
    append(box, [String(error?.message ?? error)]);
  }
  return box;
}

/**
 * Runs `action(form)` when `form` is submitted, its submit button disabled meanwhile.
 * What it returns (nodes) goes in the form's `.outcome`, and so does the error box
 * of a failure.
 */
function onSubmit(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const outcome = form.querySelector(".outcome");
    const button = form.querySelector("button:not([type=button])");
    button.disabled = true;
    try {
      outcome.replaceChildren(...[await action(form)].flat().filter(Boolean));
    } catch (error) {
      outcome.replaceChildren(problem(error));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// ---- The API --------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, error) {
    super(`${status} ${error.code}: ${error.message}`);
    this.status = status;
    this.error = error;
  }
}

/** Calls the API; resolves with the parsed body, or throws an ApiFailure with the envelope. */
async function api(method, path, { auth = session.key, body, signal } = {}) {
  const headers = {};
  if (auth) headers.Authorization = `Bearer ${auth}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
  if (!response.ok) {
    const error = parsed?.error ?? { code: `http_${response.status}`, message: text };
    if (response.status === 401 && auth && (auth === session.key || auth === session.admin)) {
      // The key or token was revoked or is wrong: forget it, and say why.
      const which = auth === session.key ? "baton.key" : "baton.admin";
      sessionStorage.removeItem(which);
      if (which === "baton.key") sessionStorage.removeItem("baton.agent");
      renderBar();
    }
    throw new ApiFailure(response.status, error);
  }
  return parsed;
}

const admin = (method, path, options = {}) => api(method, path, { ...options, auth: session.admin });

/** A file as an attachment: its bytes in base64. */
async function attachment(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { filename: file.name, media_type: file.type || "application/octet-stream", data: btoa(binary) };
}

/** The content a composer's fields describe. */
async function composed(form) {
  const text = form.elements.text.value;
  const format = form.elements.format.value;
  const files = [...form.elements.files.files];
  const content = { type: "text", format, content: text };
  if (files.length) content.attachments = await Promise.all(files.map(attachment));
  return content;
}

/** Reads an SSE body: yields `{id, event, data}` for each event, as the spec splits them. */
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      // A trailing "\r" may be half of a "\r\n": keep it with the unfinished line.
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) yield { id: event.id, event: event.event ?? "message", data: event.data.join("\n") };
          event = { data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") event.data.push(value);
        else if (field === "event") event.event = value;
        else if (field === "id") event.id = value;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * Follows a task's events after `after`, reconnecting by itself with `Last-Event-ID`
 * after a dropped connection, until `signal` aborts. `onState` hears "live" and
 * "reconnecting".
 */
async function follow(taskId, after, onEvent, onState, signal) {
  let last = after;
  let failures = 0;
  while (!signal.aborted) {
    try {
      const response = await fetch(`/v1/chat/tasks/${taskId}/stream`, {
        headers: { Authorization: `Bearer ${session.key}`, "Last-Event-ID": String(last) },
        signal,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new ApiFailure(response.status, body?.error ?? { code: `http_${response.status}`, message: "" });
      }
      onState("live");
      failures = 0;
      for await (const event of sseEvents(response.body)) {
        onEvent(event);
        if (event.id !== undefined) last = Number(event.id);
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiFailure && error.status < 500 && error.status !== 408 && error.status !== 429) {
        onState("stopped", error);
        return;
      }
    }
    if (signal.aborted) return;
    onState("reconnecting");
    failures += 1;
    await sleep(Math.min(250 * 2 ** failures, 4000), signal);
  }
}

// ---- Rendering content ----------------------------------------------------------

/** Markdown as sanitized markup; `marked` and `DOMPurify` come from the vendored scripts. */
function markdown(text) {
  const box = h("div", { class: "markdown" });
  box.innerHTML = window.DOMPurify.sanitize(window.marked.parse(text), { USE_PROFILES: { html: true } });
  for (const link of box.querySelectorAll("a")) link.setAttribute("rel", "noopener noreferrer");
  // The page may load images from this server only (CSP), and the API's files need
  // the key: a message's images could never show. Their description stands instead.
  for (const image of box.querySelectorAll("img")) {
    image.replaceWith(`[image: ${image.getAttribute("alt") || image.getAttribute("src") || ""}]`);
  }
  return box;
}

async function download(taskId, file) {
  const response = await fetch(`/v1/chat/tasks/${taskId}/files/${file.file_id}`, {
    headers: { Authorization: `Bearer ${session.key}` },
  });
  if (!response.ok) throw new ApiFailure(response.status, (await response.json()).error);
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: file.filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function attachments(taskId, files) {
  if (!files?.length) return null;
  return h("ul", { class: "attachments", "aria-label": "Attachments" }, files.map((file) =>
    // A file sent by its URL is a link to it; a stored one is downloaded with the key.
    h("li", {}, file.url
      ? h("a", { href: file.url, rel: "noopener noreferrer", target: "_blank" }, `${file.filename} (link)`)
      : h("button", {
        type: "button", class: "secondary",
        onclick: () => download(taskId, file).catch((error) => announce(error.message)),
      }, `Download ${file.filename} (${file.size_bytes} bytes)`))));
}

function contentView(taskId, message) {
  const content = message.content;
  switch (content.type) {
    case "text": {
      const streaming = message.streaming_status === "in_progress";
      let body;
      if (content.format === "markdown" && !streaming) body = markdown(content.content);
      else if (content.format === "code") body = h("pre", { class: "mono" }, content.content);
      else body = h("div", { class: `text${streaming ? " streaming" : ""}` }, content.content);
      return [body, attachments(taskId, content.attachments)];
    }
    case "reasoning":
      return h("details", { class: "reasoning" }, h("summary", {}, "Reasoning"),
        content.summary.map((line) => h("p", {}, line)),
        (content.content ?? []).map((line) => h("p", { class: "text" }, line)));
    case "data":
      return json(content.data);
    case "tool_request":
      return h("div", { class: "tool-call" },
        h("div", {}, "Tool call ", h("code", {}, content.name), " ", h("span", { class: "mono" }, `(${content.tool_call_id})`)),
        json(content.arguments));
    case "tool_response":
      return h("div", { class: "tool-answer" },
        h("div", {}, content.is_error ? "Tool error for " : "Tool result for ", h("code", {}, content.name),
          " ", h("span", { class: "mono" }, `(${content.tool_call_id})`)),
        json(content.content));
    default:
      return json(content);
  }
}

// ---- The bar and the router -----------------------------------------------------

function renderBar() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const here = location.hash.split("?")[0];
  const link = (href, text) => h("a", { href, "aria-current": here.startsWith(href) ? "page" : null }, text);
  nav.replaceChildren(...[session.key && link("#/tasks", "Tasks"), session.admin && link("#/admin", "Admin")].filter(Boolean));
  const agent = session.agent;
  who.replaceChildren(
    ...(agent ? [h("span", {}, `Agent ${agent.name} (#${agent.agent_id})`)] : []),
    ...(session.admin ? [h("span", {}, "Admin")] : []),
    (session.key || session.admin)
      ? h("button", { type: "button", class: "secondary", onclick: () => { session.signOut(); location.hash = "#/signin"; } }, "Sign out")
      : h("a", { href: "#/signin" }, "Sign in"),
  );
}

let leaving = new AbortController();

function route() {
  leaving.abort();
  leaving = new AbortController();
  renderBar();
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query ?? "");
  const parts = path.split("/").filter(Boolean);
  const signal = leaving.signal;
  let view;
  if (parts[0] === "tasks" && parts[1] && session.key) view = taskView(Number(parts[1]), signal);
  else if (parts[0] === "tasks" && session.key) view = tasksView(params, signal);
  else if (parts[0] === "admin" && parts[1] === "agents" && parts[2] && session.admin) view = agentView(Number(parts[2]), signal);
  else if (parts[0] === "admin" && session.admin) view = adminView(signal);
  else if (parts[0] !== "signin" && session.key) { location.hash = "#/tasks"; return; }
  else if (parts[0] !== "signin" && session.admin) { location.hash = "#/admin"; return; }
  else view = signInView();
  main.replaceChildren(view);
  // Move focus to the new view's heading, for keyboard and screen-reader users.
  const heading = main.querySelector("h1");
  if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus(); }
}

// ---- Sign in --------------------------------------------------------------------

function signInView() {
  const keyForm = h("form", { "aria-labelledby": "key-heading" },
    h("h2", { id: "key-heading" }, "With an agent key"),
    h("label", {}, "Agent key", h("input", { name: "key", type: "password", autocomplete: "off", required: true, placeholder: "bt_…" })),
    h("button", {}, "Sign in"),
    h("div", { class: "outcome" }));
  onSubmit(keyForm, async () => {
    const key = keyForm.elements.key.value.trim();
    session.signInAgent(key, await api("GET", "/v1/chat/agent", { auth: key }));
    location.hash = "#/tasks";
  });
  const adminForm = h("form", { "aria-labelledby": "admin-heading" },
    h("h2", { id: "admin-heading" }, "With the admin token"),
    h("label", {}, "Admin token", h("input", { name: "token", type: "password", autocomplete: "off", required: true })),
    h("button", {}, "Sign in as admin"),
    h("div", { class: "outcome" }));
  onSubmit(adminForm, async () => {
    const token = adminForm.elements.token.value.trim();
    await api("GET", "/v1/admin/agents?limit=1", { auth: token });
    session.signInAdmin(token);
    location.hash = "#/admin";
  });
  return h("div", {}, h("h1", {}, "Sign in"),
    h("p", {}, "The key stays in this tab (session storage) and is sent only to this server."),
    keyForm, adminForm);
}

// ---- Tasks ----------------------------------------------------------------------

/** What a message sent while the task's turn runs may do (docs/api.md, `on_busy`). */
const ON_BUSY = ["reject", "enqueue", "interrupt", "steer"];
const BUSY_MEANS = {
  reject: "refused (409 task_busy) until it ends",
  enqueue: "queued, and starts its turn when this one ends",
  interrupt: "sent in place of it: the turn is cancelled",
  steer: "delivered into it",
};

/**
 * A message form. With `busy`, it also asks what the message does if a turn runs
 * (`on_busy`; empty: the agent's default), and `onSend` gets that choice too.
 */
function composer(label, onSend, { busy = false } = {}) {
  const form = h("form", { class: "composer" },
    h("label", {}, label, h("textarea", { name: "text", required: true })),
    h("div", { class: "row" },
      h("label", {}, "Format", h("select", { name: "format" },
        h("option", { value: "plain" }, "plain"), h("option", { value: "markdown" }, "markdown"), h("option", { value: "code" }, "code"))),
      busy ? h("label", {}, "If a turn runs", h("select", { name: "on_busy" },
        h("option", { value: "" }, `the agent's default (${session.agent?.on_busy ?? "reject"})`),
        ON_BUSY.map((choice) => h("option", { value: choice }, choice)))) : null,
      h("label", {}, "Attach files", h("input", { name: "files", type: "file", multiple: true }))),
    h("button", {}, "Send"),
    h("div", { class: "outcome", "aria-live": "polite" }));
  return onSubmit(form, async () => {
    const shown = await onSend(await composed(form), form.elements.on_busy?.value || undefined);
    form.reset();
    return shown;
  });
}

/** What an accepted message is doing, in words. */
function acceptedText(accepted) {
  switch (accepted.status) {
    case "queued": return `Queued: position ${accepted.position} in the task's queue.`;
    case "steering": return `Sent into the running turn ${accepted.turn_id}.`;
    default: return accepted.interrupted_turn_id
      ? `Turn ${accepted.interrupted_turn_id} interrupted; turn ${accepted.turn_id} started.`
      : `Accepted: turn ${accepted.turn_id}.`;
  }
}

function tasksView(params, signal) {
  const status = params.get("status") ?? "";
  const cursor = params.get("cursor") ?? "";
  const list = h("ul", { class: "tasks", "aria-label": "Tasks" });
  const paging = h("div", { class: "row" });
  const filter = h("select", { name: "status", onchange: () => { location.hash = filter.value ? `#/tasks?status=${filter.value}` : "#/tasks"; } },
    h("option", { value: "" }, "all"), STATUSES.map((s) => h("option", { value: s, selected: s === status }, s.replace("_", " "))));
  const start = composer("First message", async (content) => {
    const accepted = await api("POST", "/v1/chat/tasks", { body: { agent_id: session.agent.agent_id, message: { content } } });
    location.hash = `#/tasks/${accepted.task_id}`;
  });

  async function load() {
    const query = new URLSearchParams({ limit: "20" });
    if (status) query.set("status", status);
    if (cursor) query.set("cursor", cursor);
    const page = await api("GET", `/v1/chat/tasks?${query}`, { signal });
    list.replaceChildren(...(page.data.length ? page.data.map((task) => h("li", { "data-task": task.task_id },
      h("a", { href: `#/tasks/${task.task_id}` }, `Task ${task.task_id}`),
      badge(task.status),
      h("span", { class: "excerpt" }, excerpt(task.input)),
      when(task.updated_at))) : [h("li", {}, "No tasks.")]));
    const links = [];
    if (cursor) links.push(h("a", { href: status ? `#/tasks?status=${status}` : "#/tasks" }, "Newest"));
    if (page.next_cursor) {
      const next = new URLSearchParams({ cursor: page.next_cursor });
      if (status) next.set("status", status);
      links.push(h("a", { href: `#/tasks?${next}` }, "Older tasks"));
    }
    paging.replaceChildren(...links);
    return page.data;
  }

  // Live badges: a long-poll on a running task ends when its status changes; then
  // the page is read again. With nothing running, the page is read every few seconds
  // (other clients start tasks too).
  (async () => {
    while (!signal.aborted) {
      try {
        const tasks = await load();
        const running = tasks.find((task) => task.status === "running");
        if (running) await api("GET", `/v1/chat/tasks/${running.task_id}?wait=25`, { signal });
        else await sleep(3000, signal);
      } catch (error) {
        if (signal.aborted) return;
        list.replaceChildren(h("li", {}, problem(error)));
        await sleep(3000, signal);
      }
    }
  })();

  return h("div", {}, h("h1", {}, "Tasks"),
    h("section", { "aria-labelledby": "new-task" }, h("h2", { id: "new-task" }, "New task"), start),
    h("section", { "aria-labelledby": "list-heading" },
      h("h2", { id: "list-heading" }, "Tasks, newest first"),
      h("div", { class: "row" }, h("label", {}, "Status", filter)),
      list, paging));
}

function excerpt(content) {
  if (!content) return "";
  if (content.type === "text") return content.content.slice(0, 140);
  if (content.type === "tool_response") return `tool result for ${content.name}`;
  return content.type;
}

function taskView(taskId, signal) {
  const heading = h("h1", {}, `Task ${taskId}`);
  const facts = h("dl", { class: "facts" });
  const notice = h("div", { "aria-live": "polite" });
  const history = h("ol", { class: "history", "aria-label": "History" });
  const connection = h("p", { class: "connection", role: "status" }, "Connecting…");
  const deliveries = h("div");
  const cancel = h("button", { type: "button", class: "danger", onclick: () => cancelTurn() }, "Cancel the running turn");
  const messages = new Map(); // message_id -> message
  const rendered = new Map(); // message_id -> <li>
  let task = null;

  const waiting = h("ol", { class: "queue", "aria-label": "Waiting messages" });
  const waitingSection = h("section", { "aria-labelledby": "queue-heading", hidden: true },
    h("h2", { id: "queue-heading" }, "Waiting messages"), waiting);

  const send = composer("Message", async (content, onBusy) => {
    const accepted = await api("POST", `/v1/chat/tasks/${taskId}/messages`, {
      body: { agent_id: session.agent.agent_id, message: { content }, ...(onBusy ? { on_busy: onBusy } : {}) },
    });
    const text = acceptedText(accepted);
    announce(text);
    await refresh();
    return h("p", { class: "accepted", "data-status": accepted.status }, text);
  }, { busy: true });

  /** The messages waiting in the task's queue, each with a way to cancel it. */
  async function loadQueue() {
    const queue = await api("GET", `/v1/chat/tasks/${taskId}/queue`, { signal });
    waitingSection.hidden = queue.data.length === 0;
    waiting.replaceChildren(...queue.data.map((queued) => h("li", { "data-queued": queued.queued_message_id },
      h("span", { class: "excerpt" }, excerpt(queued.message.content)), " ",
      h("span", { class: "place" }, queued.status === "queued" ? `(position ${queued.position})` : "(steering into the running turn)"), " ",
      h("button", { type: "button", class: "secondary", "aria-label": `Cancel waiting message ${queued.queued_message_id}`, onclick: async (event) => {
        try {
          await api("DELETE", `/v1/chat/tasks/${taskId}/queue/${queued.queued_message_id}`);
          announce("Waiting message cancelled");
          await loadQueue();
        } catch (error) {
          event.target.replaceWith(problem(error));
        }
      } }, "Cancel"))));
  }

  /** The tool message answering call `callId`, if there is one yet. */
  function answerTo(callId) {
    for (const message of messages.values()) {
      if (message.content.type === "tool_response" && message.content.tool_call_id === callId) return message;
    }
    return null;
  }

  /** The tool call message `answer` answers, if it is shown. */
  function callOf(answer) {
    for (const message of messages.values()) {
      if (message.content.type === "tool_request" && message.content.tool_call_id === answer.content.tool_call_id) return message;
    }
    return null;
  }

  function toolForm(request) {
    const form = h("form", { class: "tool-form", "aria-label": `Answer ${request.name} (${request.tool_call_id})` },
      h("label", {}, `Result of ${request.name} (JSON, or plain text)`, h("textarea", { name: "result", class: "json", required: true })),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "is_error" }), "Report as an error"),
      h("button", {}, "Send the result"),
      h("div", { class: "outcome" }));
    return onSubmit(form, async () => {
      const raw = form.elements.result.value;
      let result;
      try { result = JSON.parse(raw); } catch { result = raw; }
      await api("POST", `/v1/chat/tasks/${taskId}/messages`, {
        body: {
          agent_id: session.agent.agent_id,
          message: { role: "tool", content: { type: "tool_response", tool_call_id: request.tool_call_id, name: request.name, content: result, is_error: form.elements.is_error.checked } },
        },
      });
      await refresh();
    });
  }

  function messageItem(message) {
    const item = h("li", { class: `message ${message.role}`, "data-message": message.message_id },
      h("header", {}, h("span", { class: "role" }, message.role), `turn ${message.turn_id}`, when(message.created_at)),
      contentView(taskId, message));
    const content = message.content;
    // A call and its answer are shown together: the answer in the call's card (its
    // own message is hidden), or, while the turn waits, a form to give it.
    if (content.type === "tool_request") {
      const answer = answerTo(content.tool_call_id);
      if (answer) item.append(contentView(taskId, answer));
      else if (task?.status === "requires_action") item.append(toolForm(content));
    }
    if (content.type === "tool_response" && callOf(message)) item.hidden = true;
    if (message.metadata && Object.keys(message.metadata).length) {
      item.append(h("details", { class: "metadata" }, h("summary", {}, "Metadata"), json(message.metadata)));
    }
    return item;
  }

  function show(message) {
    messages.set(message.message_id, message);
    const item = messageItem(message);
    const old = rendered.get(message.message_id);
    if (old) {
      // A tool call still waiting for its answer keeps the form being typed into.
      const typing = old.querySelector("form.tool-form");
      const fresh = item.querySelector("form.tool-form");
      if (typing && fresh) fresh.replaceWith(typing);
      old.replaceWith(item);
    } else {
      const later = [...rendered.keys()].filter((id) => id > message.message_id).sort((a, b) => a - b)[0];
      if (later === undefined) history.append(item);
      else rendered.get(later).before(item);
    }
    rendered.set(message.message_id, item);
    // An answer goes into its call's card, in place of the form.
    if (message.content.type === "tool_response") {
      const call = callOf(message);
      if (call) show(call);
    }
  }

  function showTask(view) {
    task = view;
    heading.replaceChildren(`Task ${taskId}`, " ", badge(view.status));
    const turn = view.latest_turn;
    facts.replaceChildren(
      h("dt", {}, "Created"), h("dd", {}, when(view.created_at)),
      h("dt", {}, "Latest turn"), h("dd", {}, `${turn.turn_id} (attempt ${turn.attempt}): ${turn.status}`),
      h("dt", {}, "Started"), h("dd", {}, when(turn.started_at)),
      h("dt", {}, "Took"), h("dd", {}, turn.ended_at ? duration(turn.started_at, turn.ended_at) : `running for ${duration(turn.started_at)}`),
      ...(turn.usage ? [h("dt", {}, "Usage"), h("dd", {}, `${turn.usage.input_tokens} in, ${turn.usage.output_tokens} out, ${turn.usage.total_tokens} total tokens`)] : []),
      ...(turn.respond_by ? [h("dt", {}, "Tool answers due"), h("dd", {}, when(turn.respond_by))] : []),
      ...(turn.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, h("code", {}, turn.error.code), ": ", turn.error.message)] : []),
      ...(Object.keys(view.metadata).length ? [h("dt", {}, "Metadata"), h("dd", {}, json(view.metadata))] : []),
    );
    const busy = view.status === "running";
    cancel.hidden = !(busy || view.status === "requires_action");
    const byDefault = session.agent?.on_busy ?? "reject";
    notice.replaceChildren(...(busy
      ? [h("p", { class: "notice" }, `Turn ${turn.turn_id} is running: a message sent now is ${BUSY_MEANS[byDefault]} (the agent's default, "${byDefault}"), unless you choose otherwise below.`)]
      : view.status === "requires_action"
        ? [h("p", { class: "notice" }, "The agent asked for tool results: answer each call below.")]
        : []));
    // Tool forms appear and go with the status.
    for (const message of messages.values()) if (message.content.type === "tool_request") show(message);
  }

  async function cancelTurn() {
    try {
      showTask(await api("POST", `/v1/chat/tasks/${taskId}/cancel`));
      announce("Cancelled");
    } catch (error) {
      notice.replaceChildren(problem(error));
    }
  }

  async function loadDeliveries() {
    try {
      const page = await api("GET", `/v1/chat/tasks/${taskId}/webhook-deliveries`, { signal });
      deliveries.replaceChildren(page.data.length ? deliveryTable(page.data) : h("p", {}, "No webhook deliveries."));
    } catch (error) {
      if (!signal.aborted) deliveries.replaceChildren(problem(error));
    }
  }

  function deliveryTable(rows) {
    return h("table", {}, h("thead", {}, h("tr", {}, ["Delivery", "Turn", "Event", "Status", "Attempts", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((d) => h("tr", {},
        h("td", {}, `${d.delivery_id}`), h("td", {}, `${d.turn_id}`), h("td", {}, d.event_type),
        h("td", {}, d.status, d.next_attempt_at ? [" (next ", when(d.next_attempt_at), ")"] : null),
        h("td", {}, h("ol", {}, d.attempts.map((a) => h("li", {}, when(a.started_at), `: ${a.status_code ?? "no answer"}, ${a.latency_ms} ms`, a.error ? ` — ${a.error}` : "")))),
        h("td", {}, session.admin ? h("button", { type: "button", class: "secondary", onclick: async (event) => {
          try { await admin("POST", `/v1/admin/webhook-deliveries/${d.delivery_id}/redeliver`); event.target.replaceWith("Due again"); } catch (error) { event.target.replaceWith(problem(error)); }
        } }, "Redeliver") : null)))));
  }

  /** Reads the whole history; returns the last event id it shows. */
  async function readHistory({ keepStreaming }) {
    let cursor = "";
    let last = 0;
    for (;;) {
      const query = new URLSearchParams({ limit: "100" });
      if (cursor) query.set("cursor", cursor);
      const page = await api("GET", `/v1/chat/tasks/${taskId}/messages?${query}`, { signal });
      for (const message of page.data) {
        // A message this page is streaming in is already being built from the
        // stream's deltas: the page's copy would repeat them.
        if (keepStreaming && messages.has(message.message_id) && messages.get(message.message_id).streaming_status === "in_progress") continue;
        if (keepStreaming && message.streaming_status === "in_progress" && !messages.has(message.message_id)) continue;
        show(message);
      }
      last = page.last_event_id;
      if (!page.next_cursor) return last;
      cursor = page.next_cursor;
    }
  }

  /**
   * The task, read after the history: it is then at least as new as the history's
   * last event, so a turn it shows running ends with an event the stream (which
   * follows on from that last event) still brings. Read before, a turn that ended
   * between the two reads would show running for good.
   */
  async function readTask() {
    showTask(await api("GET", `/v1/chat/tasks/${taskId}`, { signal }));
  }

  /** After a send or a turn's end: what the stream does not carry, and the task. */
  async function refresh() {
    await readHistory({ keepStreaming: true });
    await readTask();
    await loadQueue();
    if (deliveriesOpen.open) loadDeliveries();
  }

  function onEvent(event) {
    const data = JSON.parse(event.data);
    switch (event.event) {
      case "turn_started":
        if (data.input) show(data.input);
        showTask({ ...task, status: "running", latest_turn: data.turn });
        break;
      case "text_delta": {
        // A message already shown whole (read with the history after a send) has
        // every delta in it.
        if (messages.get(data.message_id)?.streaming_status === "done") break;
        const message = messages.get(data.message_id) ?? {
          message_id: data.message_id, task_id: taskId, turn_id: data.turn_id, role: "assistant",
          content: { type: "text", format: "plain", content: "" }, streaming_status: "in_progress", created_at: data.created_at,
        };
        const next = { ...message, content: { ...message.content, content: message.content.content + data.delta } };
        show(next);
        break;
      }
      case "message_completed":
        show(data.message);
        break;
      case "message_delivered":
        // A message sent into the running turn, now part of it.
        show(data.message);
        loadQueue().catch(() => {});
        break;
      case "reset":
        // The log was pruned past where this page stands: read everything again.
        refresh().catch(() => {});
        break;
      default:
        if (ENDS.has(event.event)) {
          for (const message of data.output ?? []) show(message);
          refresh().catch(() => {});
          announce(`Turn ${data.turn_id} ${data.status}`);
        }
    }
  }

  function onState(state, error) {
    connection.dataset.state = state;
    if (state === "live") connection.textContent = "Following live.";
    else if (state === "reconnecting") {
      // Counted, so the state it passed through stays visible once it is live again.
      connection.dataset.reconnects = String(Number(connection.dataset.reconnects ?? 0) + 1);
      connection.textContent = "Connection lost: reconnecting…";
    }
    else connection.replaceChildren("Stopped following: ", problem(error));
  }

  const deliveriesOpen = h("details", { ontoggle: () => { if (deliveriesOpen.open) loadDeliveries(); } },
    h("summary", {}, "Webhook deliveries"), deliveries);

  (async () => {
    try {
      const last = await readHistory({ keepStreaming: false });
      await readTask();
      await loadQueue();
      await follow(taskId, last, onEvent, onState, signal);
    } catch (error) {
      if (!signal.aborted) main.replaceChildren(h("h1", {}, `Task ${taskId}`), problem(error));
    }
  })();

  return h("div", {}, h("p", {}, h("a", { href: "#/tasks" }, "← Tasks")), heading,
    h("section", { "aria-label": "The task" }, facts, h("div", { class: "row" }, cancel), notice),
    h("section", { "aria-labelledby": "history-heading" }, h("h2", { id: "history-heading" }, "History"), connection, history),
    waitingSection,
    h("section", { "aria-labelledby": "send-heading" }, h("h2", { id: "send-heading" }, "Send a message"), send),
    h("section", {}, deliveriesOpen));
}

// ---- Admin ----------------------------------------------------------------------

function agentFields(agent) {
  const policy = agent?.policy ?? {};
  return [
    h("label", {}, "Name", h("input", { name: "name", required: true, value: agent?.name ?? "" })),
    h("label", {}, "Runner kind", h("input", { name: "kind", required: true, value: agent?.runner.kind ?? "echo", list: "runner-kinds" })),
    h("datalist", { id: "runner-kinds" }, ["echo", "openai", "http"].map((kind) => h("option", { value: kind }))),
    h("label", {}, "Runner config (JSON)", h("textarea", { name: "config", class: "json" }, JSON.stringify(agent?.runner.config ?? {}, null, 2))),
    h("div", { class: "row" },
      h("label", {}, "When interrupted", h("select", { name: "on_interrupt" },
        ["fail", "retry"].map((v) => h("option", { value: v, selected: policy.on_interrupt === v }, v)))),
      h("label", {}, "Max attempts", h("input", { name: "max_attempts", type: "number", min: 1, value: policy.max_attempts ?? 3 })),
      h("label", {}, "Turn timeout (ms)", h("input", { name: "turn_timeout_ms", type: "number", min: 1, value: policy.turn_timeout_ms ?? 600000 })),
      h("label", {}, "When busy", h("select", { name: "on_busy" },
        ON_BUSY.map((v) => h("option", { value: v, selected: (policy.on_busy ?? "reject") === v }, v))))),
  ];
}

function agentBody(form) {
  let config;
  try { config = JSON.parse(form.elements.config.value || "{}"); } catch (error) {
    throw new Error(`The runner config is not JSON: ${error.message}`);
  }
  return {
    name: form.elements.name.value,
    runner: { kind: form.elements.kind.value, config },
    policy: {
      on_interrupt: form.elements.on_interrupt.value,
      max_attempts: Number(form.elements.max_attempts.value),
      turn_timeout_ms: Number(form.elements.turn_timeout_ms.value),
      on_busy: form.elements.on_busy.value,
    },
  };
}

function adminView(signal) {
  const agents = h("tbody");
  const more = h("div", { class: "row" });
  let cursor = "";
  async function load(reset) {
    if (reset) { cursor = ""; agents.replaceChildren(); }
    const query = new URLSearchParams({ limit: "50" });
    if (cursor) query.set("cursor", cursor);
    const page = await admin("GET", `/v1/admin/agents?${query}`, { signal });
    for (const agent of page.data) {
      agents.append(h("tr", { "data-agent": agent.agent_id },
        h("td", {}, h("a", { href: `#/admin/agents/${agent.agent_id}` }, `${agent.agent_id}`)),
        h("td", {}, agent.name), h("td", {}, agent.runner.kind), h("td", {}, when(agent.created_at))));
    }
    cursor = page.next_cursor ?? "";
    more.replaceChildren(cursor ? h("button", { type: "button", class: "secondary", onclick: () => load(false) }, "More agents") : "");
  }
  const create = h("form", { "aria-labelledby": "create-agent" }, agentFields(null),
    h("label", {}, "Default webhook URL (optional)", h("input", { name: "webhook", type: "url" })),
    h("button", {}, "Create agent"), h("div", { class: "outcome", "aria-live": "polite" }));
  onSubmit(create, async () => {
    const body = agentBody(create);
    if (create.elements.webhook.value) body.webhook = { url: create.elements.webhook.value };
    const agent = await admin("POST", "/v1/admin/agents", { body });
    create.reset();
    await load(true);
    return [
      h("p", { class: "ok" }, "Created ", h("a", { href: `#/admin/agents/${agent.agent_id}` }, `agent ${agent.agent_id}`), "."),
      agent.webhook_secret && h("p", {}, "Its webhook secret, shown only now: ", h("code", { class: "secret" }, agent.webhook_secret)),
    ];
  });
  const redeliver = h("form", { class: "inline" },
    h("label", {}, "Delivery id", h("input", { name: "delivery", type: "number", min: 1, required: true })),
    h("button", {}, "Redeliver"), h("div", { class: "outcome", "aria-live": "polite" }));
  onSubmit(redeliver, async () => {
    await admin("POST", `/v1/admin/webhook-deliveries/${redeliver.elements.delivery.value}/redeliver`);
    return h("span", { class: "ok" }, "The delivery is due again.");
  });
  load(true).catch((error) => { if (!signal.aborted) more.replaceChildren(problem(error)); });
  return h("div", {}, h("h1", {}, "Admin"),
    h("section", { "aria-labelledby": "agents-heading" }, h("h2", { id: "agents-heading" }, "Agents"),
      h("table", {}, h("thead", {}, h("tr", {}, ["Id", "Name", "Runner", "Created"].map((t) => h("th", { scope: "col" }, t)))), agents), more),
    h("section", { "aria-labelledby": "create-agent" }, h("h2", { id: "create-agent" }, "New agent"), create),
    h("section", { "aria-labelledby": "redeliver-heading" }, h("h2", { id: "redeliver-heading" }, "Webhook redelivery"), redeliver));
}

function agentView(agentId, signal) {
  const heading = h("h1", {}, `Agent ${agentId}`);
  const edit = h("form", { "aria-labelledby": "edit-heading" });
  const keys = h("tbody");
  const created = h("div", { "aria-live": "polite" });

  async function loadKeys() {
    const page = await admin("GET", `/v1/admin/agents/${agentId}/keys`, { signal });
    keys.replaceChildren(...page.data.map((key) => h("tr", { "data-key": key.prefix },
      h("td", { class: "mono" }, key.prefix), h("td", {}, when(key.created_at)), h("td", {}, when(key.last_used_at)),
      h("td", {}, key.revoked_at ? ["revoked ", when(key.revoked_at)] : h("button", {
        type: "button", class: "danger",
        onclick: async () => {
          if (!confirm(`Revoke key ${key.prefix}? Requests with it are refused from now on.`)) return;
          try { await admin("DELETE", `/v1/admin/keys/${key.prefix}`); await loadKeys(); announce(`Key ${key.prefix} revoked`); } catch (error) { created.replaceChildren(problem(error)); }
        },
      }, `Revoke ${key.prefix}`)))));
  }

  const newKey = h("button", { type: "button", onclick: async () => {
    try {
      const key = await admin("POST", `/v1/admin/agents/${agentId}/keys`);
      created.replaceChildren(h("div", { class: "ok" },
        h("p", {}, "The new key, shown only now: copy it."),
        h("output", { class: "secret mono", "data-new-key": key.prefix }, key.key)));
      await loadKeys();
    } catch (error) {
      created.replaceChildren(problem(error));
    }
  } }, "Create a key");

  (async () => {
    try {
      const agent = await admin("GET", `/v1/admin/agents/${agentId}`, { signal });
      heading.textContent = `Agent ${agent.agent_id}: ${agent.name}`;
      edit.replaceChildren(h("h2", { id: "edit-heading" }, "Settings"), ...agentFields(agent),
        h("p", {}, agent.webhook ? `Default webhook: ${agent.webhook.url}` : "No default webhook."),
        h("button", {}, "Save"), h("div", { class: "outcome", "aria-live": "polite" }));
      await loadKeys();
    } catch (error) {
      if (!signal.aborted) edit.replaceChildren(problem(error));
    }
  })();
  onSubmit(edit, async () => {
    const agent = await admin("PATCH", `/v1/admin/agents/${agentId}`, { body: agentBody(edit) });
    heading.textContent = `Agent ${agent.agent_id}: ${agent.name}`;
    return h("p", { class: "ok" }, "Saved.");
  });

  return h("div", {}, h("p", {}, h("a", { href: "#/admin" }, "← Agents")), heading, edit,
    h("section", { "aria-labelledby": "keys-heading" }, h("h2", { id: "keys-heading" }, "Keys"), newKey, created,
      h("table", {}, h("thead", {}, h("tr", {}, ["Prefix", "Created", "Last used", ""].map((t) => h("th", { scope: "col" }, t)))), keys)));
}

window.addEventListener("hashchange", route);
route();
