// The status page: submit, watch the queue and workers, follow jobs live, see finished scores.
// Plain DOM + fetch + WebSocket against the service's own API; everything shown from a job
// (sources, errors) goes in as text, never as HTML.
"use strict";

const API = "/api/v1";
const REFRESH_MS = 2000;
const FINAL = new Set(["completed", "failed", "cancelled"]);
const streams = new Map();   // job_id -> WebSocket, for queued and running jobs
const live = new Map();      // job_id -> {progress, stage, message} from the stream
let followed = null;         // the job this page submitted last: its score opens when done
let shownScore = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// API tokens (when the service has api_tokens): kept in this browser, sent as a bearer
// header, and as ?token= where a browser cannot send headers (links, images, WebSockets).
const token = () => localStorage.getItem("rescored-token") || "";
const authHeaders = () => (token() ? {Authorization: `Bearer ${token()}`} : {});
const withToken = (url) => (token() ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token())}` : url);

async function api(path, options = {}) {
  const response = await fetch(path, {cache: "no-store", ...options, headers: {...authHeaders(), ...(options.headers || {})}});
  if (response.status === 401) document.getElementById("token-form").hidden = false;
  return response;
}

async function getJSON(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("rescored-token", document.getElementById("token").value.trim());
  document.getElementById("token-form").hidden = true;
  refreshQueue();
  refreshJobs();
});

// -- submission ---------------------------------------------------------------------------
document.getElementById("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const message = document.getElementById("submit-message");
  const body = {url: document.getElementById("url").value.trim(),
                priority: document.getElementById("priority").value};
  message.className = "";
  message.textContent = "submitting…";
  delete message.dataset.jobId;
  try {
    const response = await api(`${API}/transcribe`, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const data = await response.json();
    if (!response.ok) {
      message.className = "error";
      const wait = data.retry_after_seconds ? ` (try again in ${data.retry_after_seconds} s)` : "";
      message.textContent = `refused: ${(data.error && data.error.message) || response.status}${wait}`;
      return;
    }
    followed = data.job_id;
    message.textContent = data.deduplicated
      ? `already known as job ${data.job_id}: following it`
      : `queued as job ${data.job_id}`;
    message.dataset.jobId = data.job_id;
    await refreshJobs();
  } catch (error) {
    message.className = "error";
    message.textContent = `could not submit: ${error.message}`;
  }
});

// -- queue and workers --------------------------------------------------------------------
async function refreshQueue() {
  const health = document.getElementById("health");
  try {
    const queue = await getJSON(`${API}/queue`);
    health.textContent = "service up";
    health.className = "badge ok";
    const stats = document.getElementById("queue");
    stats.replaceChildren();
    const busy = queue.workers.filter((w) => w.busy).length;
    const facts = [
      ["queued (high)", queue.queued.high], ["queued (default)", queue.queued.default],
      ["running", queue.running], ["completed", queue.completed], ["failed", queue.failed],
      ["cancelled", queue.cancelled], ["worker slots", queue.worker_slots],
      ["busy / idle", `${busy} / ${queue.workers.length - busy}`],
    ];
    for (const [name, value] of facts) {
      stats.append(el("dt", {text: name}), el("dd", {id: `q-${name.replace(/\W+/g, "-")}`, text: String(value)}));
    }
    const rows = queue.workers.map((w) => el("tr", {},
      el("td", {text: w.worker_id}),
      el("td", {}, el("span", {class: `badge status-${w.busy ? "running" : "completed"}`, text: w.busy ? "busy" : "idle"})),
      el("td", {text: w.job_id || ""}), el("td", {text: w.stage || ""})));
    document.querySelector("#workers tbody").replaceChildren(...rows);
  } catch (error) {
    health.textContent = `unreachable: ${error.message}`;
    health.className = "badge status-failed";
  }
}

// -- jobs ---------------------------------------------------------------------------------
function progressBar(job) {
  const state = live.get(job.job_id) || {};
  const percent = FINAL.has(job.status) ? (job.status === "completed" ? 100 : job.progress)
                                         : Math.max(job.progress || 0, state.progress || 0);
  const label = job.status === "failed" ? "failed"
              : job.status === "completed" ? "100% done"
              : `${percent}% ${state.stage || job.current_stage || job.status}${state.message ? ": " + state.message : ""}`;
  return el("div", {},
    el("div", {class: `bar ${job.status}`, role: "progressbar", "aria-valuenow": String(percent),
               "data-job-id": job.job_id}, el("div", {style: `width: ${percent}%`})),
    el("div", {class: "bar-label", text: label}));
}

function jobRow(job) {
  const actions = el("td");
  if (job.status === "completed") {
    actions.append(el("button", {class: "show-score", "data-job-id": job.job_id, text: "score"}));
  }
  const statusCell = el("td", {}, el("span", {class: `badge status-${job.status}`, text: job.status}));
  if (job.status === "failed" && job.error) {
    statusCell.append(el("div", {class: "error",
      text: `${job.error.stage}: ${job.error.message} (${job.error.retryable ? "transient" : "permanent"})`}));
  }
  return el("tr", {id: `job-${job.job_id}`, "data-status": job.status},
    el("td", {text: job.job_id.slice(0, 10)}),
    el("td", {class: "source", title: job.source, text: job.source}),
    el("td", {text: job.priority}),
    statusCell,
    el("td", {}, progressBar(job)),
    actions);
}

function follow(job) {
  if (FINAL.has(job.status) || streams.has(job.job_id)) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(withToken(`${scheme}://${location.host}${API}/jobs/${job.job_id}/stream`));
  streams.set(job.job_id, socket);
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "progress") {
      live.set(job.job_id, {progress: message.progress, stage: message.stage, message: message.message});
      const row = document.getElementById(`job-${job.job_id}`);
      if (row) row.children[4].replaceChildren(progressBar({...job, status: "running", progress: message.progress}));
    } else if (["completed", "error", "cancelled"].includes(message.type)) {
      refreshJobs();
      refreshQueue();
    }
  };
  socket.onclose = () => streams.delete(job.job_id);
}

async function refreshJobs() {
  try {
    const {jobs} = await getJSON(`${API}/jobs?limit=25`);
    document.querySelector("#jobs tbody").replaceChildren(...jobs.map(jobRow));
    jobs.forEach(follow);
    const mine = jobs.find((job) => job.job_id === followed);
    if (mine && mine.status === "completed" && shownScore !== mine.job_id) showScore(mine.job_id);
  } catch (error) {
    console.warn("jobs refresh failed", error);
  }
}

document.querySelector("#jobs tbody").addEventListener("click", (event) => {
  const button = event.target.closest("button.show-score");
  if (button) showScore(button.dataset.jobId);
});

// -- a finished score ---------------------------------------------------------------------
async function showScore(jobId) {
  shownScore = jobId;
  const job = await getJSON(`${API}/jobs/${jobId}`);
  const result = job.result || {};
  document.getElementById("score-panel").hidden = false;
  document.getElementById("score-title").textContent = result.title ? `: ${result.title}` : `: ${jobId}`;
  document.getElementById("score-facts").textContent =
    `${result.n_notes} notes · ${result.key} · ${result.tempo_bpm} bpm · ${result.time_signature} · ` +
    `${result.duration_s} s of audio · separation: ${result.separation_model}`;
  // the job's files come from the service's output layout: a new kind of output shows up here by itself
  const files = job.files || [];
  const links = files.filter((file) => file.kind !== "preview" && file.kind !== "pages").map((file) => {
    const kind = file.name ? file.kind.replace(/s$/, "") : file.kind;
    const text = file.name ? `${file.name} ${kind}` : kind;
    return el("a", {href: withToken(file.url), id: `download-${kind}${file.name ? "-" + file.name : ""}`,
                    download: "", text});
  });
  document.getElementById("downloads").replaceChildren(...links);
  // every page of the score; a job from before page pictures existed shows its first-page preview
  let pages = files.filter((file) => file.kind === "pages").sort((a, b) => Number(a.name) - Number(b.name));
  if (pages.length === 0) {
    const preview = files.find((file) => file.kind === "preview");
    pages = [{url: preview ? preview.url : `${API}/scores/${jobId}/preview`}];
  }
  const images = pages.map((page, index) => el("img", {
    id: index === 0 ? "score-image" : `score-page-${index + 1}`, class: "score-page",
    alt: `page ${index + 1} of the score`, src: withToken(page.url)}));
  images[0].onerror = () => document.getElementById("score-view").replaceChildren(
    el("p", {text: "no pictures of this score (download the MusicXML)"}));
  document.getElementById("score-view").replaceChildren(...images);
  const rows = job.timeline.map((span) => el("tr", {},
    el("td", {text: String(span.attempt)}), el("td", {text: span.stage}),
    el("td", {text: span.seconds == null ? "…" : span.seconds.toFixed(2)}),
    el("td", {text: (span.workers || []).map(describeWorker).join("; ")})));
  document.querySelector("#timeline tbody").replaceChildren(...rows);
}

function describeWorker(worker) {
  const parts = [worker.actor || worker.worker_id || worker.host, worker.device, worker.stem];
  return parts.filter(Boolean).join(" ");
}

refreshQueue();
refreshJobs();
setInterval(refreshQueue, REFRESH_MS);
setInterval(refreshJobs, REFRESH_MS);
