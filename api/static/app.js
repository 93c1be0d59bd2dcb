// The tokenspool page: submit a job, follow its events over SSE (docs/protocol.md §2, §6, §7).
// Plain browser JavaScript, no build step, nothing loaded from another origin.
"use strict";

(() => {
  const TERMINAL = { "job.completed": "completed", "job.failed": "failed", "job.cancelled": "cancelled" };
  const EVENT_TYPES = [
    "job.queued", "job.started", "job.retrying", "content.delta", "reasoning.delta",
    "tool_call.delta", "tool_call.done", "usage", ...Object.keys(TERMINAL),
  ];
  const LOG_LIMIT = 200; // the event log keeps the newest entries only: a long job must not grow the DOM without end
  const REQUEST_TIMEOUT_MS = 15000; // every fetch has a deadline
  const SAMPLE_TOOL = {
    type: "function",
    function: {
      name: "get_weather",
      description: "Weather forecast for a city",
      parameters: {
        type: "object",
        properties: { city: { type: "string" }, unit: { type: "string" }, days: { type: "integer" } },
        required: ["city"],
      },
    },
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("job-form"), model: $("model"), tools: $("tools"), prompt: $("prompt"),
    submit: $("submit"), cancel: $("cancel"), drop: $("drop"), formError: $("form-error"),
    status: $("status"), attempt: $("attempt"), jobId: $("job-id"), reconnects: $("reconnects"),
    resumedFrom: $("resumed-from"), lastId: $("last-id"), connection: $("connection"),
    note: $("note"), outcome: $("outcome"), reasoningBlock: $("reasoning-block"), reasoning: $("reasoning"),
    toolCalls: $("tool-calls"), content: $("content"), log: $("log"), eventCount: $("event-count"),
  };

  // One job at a time. `source` is the live EventSource; handlers bound to an older one ignore
  // anything it still delivers, so a dropped connection can never add text twice.
  let job = null; // {id, eventsUrl}
  let source = null;
  let lastId = null; // the id of the last event applied: where a new connection resumes
  let reconnects = 0;
  let browserRetrying = false; // EventSource is reconnecting by itself (it sends Last-Event-ID)
  let finished = false;
  let eventCount = 0;
  let toolCalls = new Map(); // index -> {name, args, el}

  async function api(method, path, body) {
    const init = { method, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS), headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error(`${response.status}: ${describe(data)}`);
      error.status = response.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  function describe(data) {
    const detail = data && data.detail;
    if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    if (typeof detail === "string") return detail;
    return JSON.stringify(data);
  }

  function showError(message) {
    ui.formError.textContent = message;
    ui.formError.hidden = !message;
  }

  function setNote(message) {
    ui.note.textContent = message;
    ui.note.hidden = !message;
  }

  function setOutcome(message) {
    ui.outcome.textContent = message;
    ui.outcome.hidden = !message;
  }

  function setStatus(status) {
    ui.status.textContent = status;
    ui.status.dataset.status = status;
    const live = status === "queued" || status === "running";
    ui.cancel.disabled = !live;
  }

  function setConnection(state) {
    ui.connection.textContent = state;
    ui.drop.disabled = !job || finished;
  }

  function clearOutput() {
    ui.content.replaceChildren();
    ui.reasoning.replaceChildren();
    ui.reasoningBlock.hidden = true;
    ui.toolCalls.replaceChildren();
    ui.toolCalls.hidden = true;
    toolCalls = new Map();
  }

  function reset() {
    if (source) source.close();
    source = null;
    job = null;
    lastId = null;
    reconnects = 0;
    browserRetrying = false;
    finished = false;
    eventCount = 0;
    clearOutput();
    ui.log.replaceChildren();
    ui.eventCount.textContent = "0";
    ui.jobId.textContent = "–";
    ui.attempt.textContent = "–";
    ui.reconnects.textContent = "0";
    ui.resumedFrom.textContent = "–";
    ui.lastId.textContent = "–";
    setNote("");
    setOutcome("");
    showError("");
    setStatus("idle");
    setConnection("closed");
  }

  function connect(after) {
    const url = after ? `${job.eventsUrl}?after=${encodeURIComponent(after)}` : job.eventsUrl;
    const es = new EventSource(url);
    source = es;
    setConnection("connecting");
    for (const type of EVENT_TYPES) {
      es.addEventListener(type, (message) => {
        if (es === source) apply(message);
      });
    }
    es.onopen = () => {
      if (es !== source) return;
      if (browserRetrying) {
        // the browser reconnected on its own, resuming with Last-Event-ID = lastId
        browserRetrying = false;
        countReconnect(lastId);
      }
      setConnection("open");
    };
    es.onerror = () => {
      if (es !== source || finished) return;
      if (es.readyState === EventSource.CONNECTING) {
        browserRetrying = true;
        setConnection("reconnecting…");
      } else {
        // refused (404, 410, 400, 503...): EventSource gives up and does not say why
        source = null;
        setConnection("failed");
        streamFailed();
      }
    };
  }

  function countReconnect(after) {
    reconnects += 1;
    ui.reconnects.textContent = String(reconnects);
    ui.resumedFrom.textContent = after || "0";
    mark(`reconnected: resuming after ${after || "0"}`);
  }

  function drop() {
    if (!job || finished) return;
    if (source) source.close(); // a closed EventSource dispatches nothing more
    source = null;
    browserRetrying = false;
    countReconnect(lastId);
    // EventSource cannot set Last-Event-ID itself; the API takes the same offset as ?after=
    connect(lastId);
  }

  async function streamFailed() {
    // The stream was refused: show what the job view says instead (e.g. 410 after trimming).
    try {
      const view = await api("GET", `/v1/jobs/${encodeURIComponent(job.id)}`);
      if (["completed", "failed", "cancelled"].includes(view.status)) {
        finished = true;
        clearOutput();
        ui.content.textContent = view.output.content;
        if (view.output.reasoning) {
          ui.reasoning.textContent = view.output.reasoning;
          ui.reasoningBlock.hidden = false;
        }
        for (const call of view.output.tool_calls) {
          const entry = toolCall(call.index);
          setToolCall(entry, call.name, call.arguments, true);
        }
        setStatus(view.status);
        setConnection("closed");
        setOutcome("The event stream is gone; this is the job's stored output.");
      } else {
        setStatus(view.status);
        setOutcome("The event stream was refused; press Drop connection to try again.");
      }
    } catch (error) {
      setOutcome(`The event stream was refused (${error.message}).`);
    }
  }

  function log(message, event) {
    eventCount += 1;
    ui.eventCount.textContent = String(eventCount);
    const item = document.createElement("li");
    const { type, job_id, event_id, ...rest } = event;
    item.textContent = `${message.lastEventId}  ${type}  ${JSON.stringify(rest)}`;
    appendLog(item);
  }

  function mark(text) {
    const item = document.createElement("li");
    item.className = "mark";
    item.textContent = `— ${text} —`;
    appendLog(item);
  }

  function appendLog(item) {
    ui.log.append(item);
    while (ui.log.childElementCount > LOG_LIMIT) ui.log.firstElementChild.remove();
  }

  function toolCall(index) {
    let entry = toolCalls.get(index);
    if (!entry) {
      const el = document.createElement("div");
      el.className = "tool-call";
      el.id = `tool-call-${index}`;
      el.innerHTML = '<span class="name"></span><code class="arguments"></code><span class="state">forming…</span>';
      ui.toolCalls.append(el);
      ui.toolCalls.hidden = false;
      entry = { name: "", args: "", el };
      toolCalls.set(index, entry);
    }
    return entry;
  }

  function setToolCall(entry, name, args, done) {
    entry.name = name || entry.name;
    entry.args = args;
    entry.el.querySelector(".name").textContent = entry.name || "(unnamed)";
    entry.el.querySelector(".arguments").textContent = entry.args;
    entry.el.querySelector(".state").textContent = done ? "done" : "forming…";
    entry.el.classList.toggle("done", done);
  }

  function apply(message) {
    const event = JSON.parse(message.data);
    lastId = message.lastEventId || event.event_id;
    ui.lastId.textContent = lastId;
    log(message, event);
    switch (event.type) {
      case "job.queued":
        setStatus("queued");
        break;
      case "job.started":
        setStatus("running");
        ui.attempt.textContent = String(event.attempt);
        break;
      case "job.retrying":
        // protocol §3: the next attempt starts over, so what this one wrote is discarded
        setNote(
          `Attempt ${event.attempt} was superseded (${event.reason}); ` +
          `attempt ${event.next_attempt} starts over and its output replaces it.`,
        );
        clearOutput();
        break;
      case "content.delta":
        ui.content.append(event.text);
        break;
      case "reasoning.delta":
        ui.reasoning.append(event.text);
        ui.reasoningBlock.hidden = false;
        break;
      case "tool_call.delta": {
        const entry = toolCall(event.index);
        setToolCall(entry, event.name, entry.args + (event.arguments_delta || ""), false);
        break;
      }
      case "tool_call.done":
        setToolCall(toolCall(event.index), event.name, event.arguments, true);
        break;
      case "usage":
        break; // shown with the terminal event
      default:
        if (event.type in TERMINAL) end(event);
    }
  }

  function end(event) {
    // The server closes the stream after the terminal event; closing first stops EventSource
    // from reconnecting to a stream that has nothing more to say.
    finished = true;
    if (source) source.close();
    source = null;
    setStatus(TERMINAL[event.type]);
    setConnection("closed (job ended)");
    const usage = event.usage ? ` · ${event.usage.total_tokens} tokens${event.usage.estimated ? " (estimated)" : ""}` : "";
    if (event.type === "job.completed") setOutcome(`finish_reason: ${event.finish_reason}${usage}`);
    else if (event.type === "job.failed") setOutcome(`${event.error.type}: ${event.error.message}`);
    else setOutcome(`${event.reason || "cancelled"}${usage}`);
  }

  async function submit(domEvent) {
    domEvent.preventDefault();
    reset();
    const body = { model: ui.model.value, messages: [{ role: "user", content: ui.prompt.value }] };
    if (ui.tools.checked) body.tools = [SAMPLE_TOOL];
    ui.submit.disabled = true;
    try {
      const accepted = await api("POST", "/v1/jobs", body);
      attach(accepted.id, accepted.events_url, accepted.status);
      history.replaceState(null, "", `?job=${encodeURIComponent(accepted.id)}`);
    } catch (error) {
      showError(`Submit failed: ${error.message}`);
    } finally {
      ui.submit.disabled = false;
    }
  }

  function attach(id, eventsUrl, status) {
    job = { id, eventsUrl };
    ui.jobId.textContent = id;
    setStatus(status);
    connect(null);
  }

  async function cancel() {
    if (!job) return;
    ui.cancel.disabled = true;
    try {
      const answer = await api("POST", `/v1/jobs/${encodeURIComponent(job.id)}/cancel`);
      if (!finished && answer.status === "cancelling") setOutcome("Cancel requested; waiting for the worker…");
    } catch (error) {
      setOutcome(error.status === 409 ? `Too late to cancel: the job is ${error.data.status}.` : `Cancel failed: ${error.message}`);
    }
  }

  async function loadModels() {
    try {
      const models = await api("GET", "/v1/models");
      ui.model.replaceChildren(
        ...models.data.map((m) => new Option(m.id, m.id)),
      );
    } catch (error) {
      showError(`Could not load the models: ${error.message}`);
    }
  }

  async function resumeFromUrl() {
    // ?job=<id> (set on submit) reattaches after a reload: the stream replays from the start
    const id = new URLSearchParams(location.search).get("job");
    if (!id) return;
    try {
      const view = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`);
      attach(view.id, view.events_url, view.status);
    } catch (error) {
      showError(`Could not load job ${id}: ${error.message}`);
    }
  }

  ui.form.addEventListener("submit", submit);
  ui.cancel.addEventListener("click", cancel);
  ui.drop.addEventListener("click", drop);
  reset();
  loadModels().then(resumeFromUrl);
})();
