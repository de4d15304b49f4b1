// ragtune console: plain browser JavaScript, no build step. The API key lives in
// sessionStorage (this tab only), never in localStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "ragtune.key";

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// One clear sentence for each answer the API can refuse with; a 422 names the field.
function fieldOf(loc) {
  const parts = [].concat(loc || []).filter((p) => !["body", "path", "query"].includes(p));
  return parts.join(".");
}
function sentence(status, body, retryAfter) {
  const err = (body && body.error) || {};
  const msg = err.message || "";
  const details = err.details;
  const wait = retryAfter || (details && details.retry_after) || null;
  switch (status) {
    case 401: return "The server needs an API key: enter one above." + (msg ? " (" + msg + ")" : "");
    case 403: return "This key may not do that" + (msg ? ": " + msg : ".");
    case 404: return "Not found: " + (msg || "it may have been deleted.");
    case 409: return "Conflict: " + (msg || "it changed or is busy; reload and retry.") + (wait ? " Retry in " + wait + " s." : "");
    case 413: return "Too large: " + (msg || "the request is over the server's size limit.");
    case 422: {
      const first = Array.isArray(details) ? details[0] : details && typeof details === "object" ? details : null;
      const field = first ? fieldOf(first.loc) : "";
      let why = first && first.msg ? first.msg.replace(/^Value error, /, "") : msg;
      if (field && why.startsWith(field + ": ")) why = why.slice(field.length + 2);
      return "Not accepted" + (field ? " (" + field + ")" : "") + ": " + (why || "check the fields.");
    }
    case 429: return "Too many requests: wait " + (wait || "a few") + " seconds and retry.";
    case 503: return "The server is busy: " + (msg || "retry shortly.") + (wait ? " Retry in " + wait + " s." : "");
    default: return "The server answered " + status + (msg ? ": " + msg : ".");
  }
}

class ApiError extends Error {
  constructor(message, retryAfter) { super(message); this.retryAfter = retryAfter || 0; }
}
// Pages that poll (tuning, evaluation) stay inside the per-key rate limit: one cycle every
// POLL_MS, and after a 429 (or a 409/503 with a wait) nothing before the server's Retry-After;
// a refusal without a wait (401, 403, 404) stops the polling until the page is opened again.
const POLL_MS = 3000;
let backoffUntil = 0;
function nextPoll() { return Math.max(POLL_MS, backoffUntil - Date.now()); }

// The ApiError of a response that is not ok: its sentence and the wait it asks for.
async function refusal(r) {
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON */ }
  const wait = r.headers.get("Retry-After");
  return new ApiError(sentence(r.status, data, wait), Number(wait) || 0);
}

async function api(method, path, body, isForm) {
  const opts = { method, headers: headers(isForm || body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) opts.body = isForm ? body : JSON.stringify(body);
  const r = await fetch(path, opts);
  if (!r.ok) throw await refusal(r);
  const type = r.headers.get("Content-Type") || "";
  return type.includes("json") ? r.json() : r.text();
}

// Run fn; a refusal becomes one sentence in the element next to what caused it. True when fn
// succeeded.
async function guarded(errorId, fn) {
  const el = $(errorId);
  el.textContent = "";
  try { await fn(); return true; } catch (e) {
    el.textContent = e instanceof ApiError ? e.message : "Could not reach the server: " + e.message;
    if (e.retryAfter) backoffUntil = Math.max(backoffUntil, Date.now() + e.retryAfter * 1000);
    return false;
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// ---- pages ---------------------------------------------------------------------------------
const loaders = {};
let current = "chat";
function show(page) {
  current = page;
  clearTimeout(tuneTimer); clearTimeout(evalTimer);  // a hidden page polls no more
  for (const b of document.querySelectorAll("nav button")) {
    if (b.dataset.page === page) b.setAttribute("aria-current", "page"); else b.removeAttribute("aria-current");
  }
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "page-" + page;
  if (loaders[page]) loaders[page]();
}
for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.page));
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const v = $("api-key").value.trim();
  if (v) sessionStorage.setItem(KEY, v); else sessionStorage.removeItem(KEY);
  $("api-key").value = "";
  if (current !== "chat") loadModels();  // the chat's adapter list follows the key's view
  show(current);
});

// ---- chat ----------------------------------------------------------------------------------
let baseModel = "";
async function loadModels() {
  await guarded("ask-error", async () => {
    const data = await api("GET", "/v1/models");
    const ids = data.data.map((m) => m.id);
    baseModel = ids[0];
    const sel = $("adapter"), picked = sel.value;
    sel.replaceChildren(...(ids.length > 1 ? ids.slice(1).map((id) => el("option", { value: id }, id)) : [el("option", { value: "" }, "(none loaded)")]));
    if (ids.includes(picked)) sel.value = picked;
  });
}

function openPassage(c) {
  $("passage-doc").textContent = "Document " + c.doc_id + (c.title ? " — " + c.title : "") + ", characters " + c.start + "–" + c.end;
  const pre = $("passage-text");
  pre.replaceChildren("Loading the document…");
  $("passage").hidden = false;
  $("passage").focus();
  api("GET", "/v1/documents/" + encodeURIComponent(c.doc_id)).then((doc) => {
    const t = doc.text || "";
    pre.replaceChildren(t.slice(0, c.start), el("mark", {}, t.slice(c.start, c.end)), t.slice(c.end));
    const m = pre.querySelector("mark");
    if (m && m.scrollIntoView) m.scrollIntoView({ block: "nearest" });
  }, () => pre.replaceChildren(el("mark", {}, c.text), " (the document is gone; this is the passage as cited)"));
}
$("passage-close").addEventListener("click", () => { $("passage").hidden = true; $("question").focus(); });

function feedbackControls(answerId, questionId) {
  const status = el("p", { role: "status" });
  const send = (rating, correction) => api("POST", "/v1/feedback", Object.assign({ answer_id: answerId, rating }, correction ? { correction } : {}))
    .then(() => { status.textContent = "Thanks: rated " + rating + (correction ? " with a better answer." : "."); },
      (e) => { status.textContent = e.message; status.className = "error"; });
  const better = el("textarea", { rows: "2", id: "better-" + answerId });
  return el("div", { class: "feedback" },
    el("button", { type: "button", "aria-describedby": questionId, onclick: () => send("up") }, "Good answer"),
    " ",
    el("button", { type: "button", "aria-describedby": questionId, onclick: () => send("down") }, "Bad answer"),
    el("label", { for: "better-" + answerId }, "Suggest a better answer"), better,
    el("button", { type: "button", "aria-describedby": questionId, onclick: () => better.value.trim() && send("down", better.value.trim()) }, "Send the better answer"),
    status);
}

$("ask-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const q = $("question").value.trim();
  if (!q) return;
  const mode = $("mode").value;
  const tuned = mode === "ft" || mode === "hybrid";
  if (tuned && !$("adapter").value) { $("ask-error").textContent = "Mode " + mode + " needs an adapter: load one on the Tuning page."; return; }
  const body = { model: tuned ? $("adapter").value : baseModel, messages: [{ role: "user", content: q }], stream: true, retrieval: mode === "rag" || mode === "hybrid" };
  const text = el("p", { class: "answer-text" });
  const cites = el("div", { class: "citations" });
  const qid = "q-" + Date.now() + "-" + Math.random().toString(36).slice(2, 8);
  // aria-busy: a screen reader reads the answer once it is whole, not token by token
  const item = el("li", { "aria-busy": "true" }, el("p", { id: qid }, el("strong", {}, "Q: "), q), text, cites);
  $("answers").prepend(item);
  await guarded("ask-error", async () => {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
    if (!r.ok) { item.remove(); throw await refusal(r); }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "", id = null, citations = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, cut); buf = buf.slice(cut + 2);
        for (const line of frame.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) throw new ApiError(chunk.error.message || "The answer failed.");
          id = chunk.id || id;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) text.append(delta.content);
          if (chunk.citations) citations = chunk.citations;
        }
      }
    }
    if (citations.length) {
      cites.append(el("span", {}, "Sources: "));
      citations.forEach((c, i) => cites.append(el("button", { type: "button", class: "citation", onclick: () => openPassage(c) }, "[" + (i + 1) + "] " + c.doc_id)));
    } else {
      cites.append(el("span", { class: "no-citations" }, "No sources cited."));
    }
    if (id) item.append(feedbackControls(id, qid));
  });
  item.removeAttribute("aria-busy");
});
loaders.chat = loadModels;

// A list page's "first–last of total" line in #<prefix>-page and its Previous/Next buttons.
function pager(prefix, offset, shown, total, suffix, none) {
  const last = offset + shown;
  $(prefix + "-page").textContent = total ? (offset + 1) + "–" + last + " of " + total + suffix : none;
  $(prefix + "-prev").disabled = offset === 0;
  $(prefix + "-next").disabled = last >= total;
}

// ---- documents -----------------------------------------------------------------------------
const PAGE = 20;
let docOffset = 0, docTotal = 0, docRows = [], docQuery = "", docTimer = null;
function when(t) { return t ? new Date(t * 1000).toLocaleString() : ""; }
function renderDocs() {
  $("doc-rows").replaceChildren(...docRows.map((d) => el("tr", {},
    el("td", {}, d.id), el("td", {}, String(d.version)), el("td", {}, when(d.updated)),
    el("td", {},
      el("button", { type: "button", "aria-label": "Edit " + d.id, onclick: () => editDoc(d.id) }, "Edit"), " ",
      el("button", { type: "button", "aria-label": "Delete " + d.id, onclick: () => deleteDoc(d.id) }, "Delete")))));
  const match = docQuery ? " matching “" + docQuery + "”" : "";
  pager("doc", docOffset, docRows.length, docTotal, match, docQuery ? "No document matches “" + docQuery + "”." : "No documents yet.");
}
async function loadDocs() {
  await guarded("doc-list-error", async () => {
    const q = docQuery ? "&q=" + encodeURIComponent(docQuery) : "";
    const data = await api("GET", "/v1/documents?offset=" + docOffset + "&limit=" + PAGE + q);
    if (!data.documents.length && docOffset > 0 && data.total > 0) {  // the page emptied (deletes)
      docOffset = Math.floor((data.total - 1) / PAGE) * PAGE;
      return loadDocs();
    }
    docTotal = data.total; docRows = data.documents; renderDocs();
  });
}
async function editDoc(id) {
  await guarded("doc-error", async () => {
    const d = await api("GET", "/v1/documents/" + encodeURIComponent(id));
    $("doc-id").value = d.id; $("doc-text").value = d.text; $("doc-text").focus();
    // saved back as loaded unless edited: a PUT replaces the metadata too
    $("doc-meta").value = Object.keys(d.metadata || {}).length ? JSON.stringify(d.metadata, null, 2) : "";
    $("doc-status").textContent = "Editing " + d.id + " (version " + d.version + ").";
  });
}
async function deleteDoc(id) {
  if (!window.confirm("Delete document " + id + "? Its passages leave the index.")) return;
  await guarded("doc-list-error", async () => {
    await api("DELETE", "/v1/documents/" + encodeURIComponent(id));
    $("doc-status").textContent = "Deleted " + id + ".";
    await loadDocs();
  });
}
$("doc-filter").addEventListener("input", () => {
  clearTimeout(docTimer);
  docTimer = setTimeout(() => { docQuery = $("doc-filter").value.trim(); docOffset = 0; loadDocs(); }, 250);
});
$("doc-search").addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(docTimer); docQuery = $("doc-filter").value.trim(); docOffset = 0; loadDocs(); });
$("doc-prev").addEventListener("click", () => { docOffset = Math.max(0, docOffset - PAGE); loadDocs(); });
$("doc-next").addEventListener("click", () => { docOffset += PAGE; loadDocs(); });
function written(r) { return r.id + " (" + r.status + ", version " + r.version + ", " + r.chunks + (r.chunks === 1 ? " passage)" : " passages)"); }
$("doc-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = $("doc-id").value.trim(), text = $("doc-text").value, meta = $("doc-meta").value.trim();
  $("doc-status").textContent = "";
  await guarded("doc-error", async () => {
    let metadata = {};
    if (meta) {
      try { metadata = JSON.parse(meta); } catch (x) { throw new ApiError("Not accepted (metadata): not valid JSON (" + x.message + ")."); }
      if (!metadata || typeof metadata !== "object" || Array.isArray(metadata)) throw new ApiError("Not accepted (metadata): a JSON object is needed, like {\"source\": \"notes\"}.");
    }
    const body = { text, metadata };
    // PUT replaces the document stored under the id, or adds it; no id: the index makes one
    const r = id ? await api("PUT", "/v1/documents/" + encodeURIComponent(id), body) : (await api("POST", "/v1/documents", body)).documents[0];
    $("doc-id").value = ""; $("doc-text").value = ""; $("doc-meta").value = "";
    $("doc-status").textContent = "Saved " + written(r) + ".";
    await loadDocs();
  });
});
$("upload-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("upload-results").replaceChildren();
  $("upload-error").textContent = "";
  for (const file of $("upload-files").files) {  // one request each: one file's refusal spares the rest
    const form = new FormData();
    form.append("files", file);
    const item = el("li", {}, file.name + ": uploading…");
    $("upload-results").append(item);
    try {
      const r = await api("POST", "/v1/documents/upload", form, true);
      const lines = r.documents.map(written).concat(r.failed.map((f) => "refused " + f.source + ": " + f.reason));
      item.replaceChildren(file.name + ": " + (lines.length ? lines.join("; ") : "nothing in it to add"));
      if (r.failed.length) item.className = "error";
    } catch (x) { item.replaceChildren(file.name + ": " + x.message); item.className = "error"; }
  }
  await loadDocs();
});
loaders.documents = loadDocs;

// ---- tuning --------------------------------------------------------------------------------
const METHODS = {
  generator: ["lora", "qlora", "dora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning", "full", "kto", "dpo"],
  retriever: ["lora", "full"],
};
const LIVE = ["queued", "validating", "running"];
function fillMethods() {
  const comp = $("tune-component").value;
  $("tune-method").replaceChildren(...METHODS[comp].map((m) => el("option", { value: m }, m)));
  $("tune-source").value = comp === "retriever" ? "pairs" : "raft";
  fitSources();
}
// the training data each component and method can take (the others are disabled)
function sourceFits(value, comp, method) {
  if (value === "file") return true;
  if (comp === "retriever") return value === "pairs";
  if (["kto", "dpo"].includes(method)) return value === "feedback";
  return value === "raft" || value === "qa";
}
function fitSources() {
  const comp = $("tune-component").value, method = $("tune-method").value, source = $("tune-source");
  for (const o of source.options) o.disabled = !sourceFits(o.value, comp, method);
  if (source.selectedOptions[0].disabled) source.value = comp === "retriever" ? "pairs" : ["kto", "dpo"].includes(method) ? "feedback" : "raft";
  $("tune-activate-row").hidden = comp !== "retriever";
  sourceChanged();
}
function sourceChanged() { $("tune-file-fields").hidden = $("tune-source").value !== "file"; }
$("tune-component").addEventListener("change", fillMethods);
$("tune-source").addEventListener("change", sourceChanged);
$("tune-method").addEventListener("change", fitSources);

function drawLoss(job) {
  const c = $("loss-chart"), g = c.getContext("2d");
  const train = (job && job.loss_curve) || [], val = (job && job.val_losses) || [];
  g.fillStyle = "#fff"; g.fillRect(0, 0, c.width, c.height);
  g.font = "12px system-ui, sans-serif";
  if (!train.length && !val.length) {
    g.fillStyle = "#1a1a1a"; g.fillText(job ? "No loss reported yet." : "No job yet.", 12, 20);
    c.setAttribute("aria-label", "Loss of the newest job: " + (job ? "none reported yet" : "no job yet"));
    return;
  }
  const all = train.concat(val), ys = all.map((p) => p[1]), xs = all.map((p) => p[0]);
  const lo = Math.min(...ys), hi = Math.max(...ys), x0 = Math.min(...xs), x1 = Math.max(...xs);
  const L = 48, R = 12, T = 12, B = 28, W = c.width - L - R, H = c.height - T - B;
  const px = (x) => L + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * W;
  const py = (y) => T + H - (hi > lo ? (y - lo) / (hi - lo) : 0.5) * H;
  g.strokeStyle = "#767676"; g.lineWidth = 1; g.beginPath(); g.moveTo(L, T); g.lineTo(L, T + H); g.lineTo(L + W, T + H); g.stroke();
  g.fillStyle = "#1a1a1a";
  g.fillText(hi.toFixed(3), 4, T + 8); g.fillText(lo.toFixed(3), 4, T + H);
  g.fillText("step " + x0, L, c.height - 8); g.fillText("step " + x1, L + W - 48, c.height - 8);
  for (const [curve, color] of [[train, "#0b5394"], [val, "#b45309"]]) {
    if (!curve.length) continue;
    g.strokeStyle = color; g.fillStyle = color; g.lineWidth = 2; g.beginPath();
    curve.forEach((p, i) => { if (i) g.lineTo(px(p[0]), py(p[1])); else g.moveTo(px(p[0]), py(p[1])); });
    g.stroke();
    if (curve.length === 1) g.fillRect(px(curve[0][0]) - 2, py(curve[0][1]) - 2, 4, 4);
  }
  const last = (curve) => curve.length ? curve[curve.length - 1][1].toFixed(3) + " at step " + curve[curve.length - 1][0] : "none yet";
  c.setAttribute("aria-label", "Loss of job " + job.id + ": training " + last(train) + "; validation " + last(val));
}
function jobLine(j) {
  const step = "step " + j.progress.step + (j.progress.total ? " of " + j.progress.total : "");
  const eta = j.eta_s != null && LIVE.includes(j.state) ? ", about " + duration(j.eta_s) + " left" : "";
  return j.id + " — " + j.component + "/" + j.method + ": " + j.state + " (" + step + eta + ")" + (j.adapter ? ", adapter " + j.adapter : "") + (j.error ? " — " + j.error : "");
}
function duration(s) { s = Math.max(0, Math.round(s)); return s < 90 ? s + " s" : s < 5400 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h"; }
let drawn = "";  // the job (id, state, step) the chart shows
async function loadJobs() {
  const data = await api("GET", "/v1/tune/jobs");
  const list = data.jobs;
  $("jobs").replaceChildren(...list.map((j) => el("li", { "data-state": j.state }, jobLine(j), " ",
    LIVE.includes(j.state) && !j.cancel_requested ? el("button", { type: "button", "aria-label": "Cancel job " + j.id, onclick: () => guarded("tune-error", () => api("POST", "/v1/tune/jobs/" + j.id + "/cancel").then(refreshTuning)) }, "Cancel") : "")));
  const newest = list[0];
  const key = newest ? newest.id + newest.state + newest.progress.step : "";
  if (key !== drawn) { drawLoss(newest ? await api("GET", "/v1/tune/jobs/" + newest.id) : null); drawn = key; }
  return { live: list.some((j) => LIVE.includes(j.state)), states: list.map((j) => j.id + j.state).join() };
}
function trialText(t) {
  const params = Object.entries(t.params).map(([k, v]) => k.replace("hyperparameters.", "") + "=" + (typeof v === "number" ? Number(v.toPrecision(3)) : v)).join(", ");
  return "trial " + t.number + (t.baseline ? " (baseline)" : "") + ": " + t.state + (params ? ", " + params : "") + (t.value != null ? ", objective " + t.value.toFixed(4) : "") + (t.error ? " — " + t.error : "");
}
async function loadSweeps() {
  const data = await api("GET", "/v1/tune/sweeps");
  $("sweeps").replaceChildren(...data.sweeps.map((s) => {
    const done = s.trials.filter((t) => t.state !== "running").length;
    const head = s.id + " — " + s.method + ", " + s.objective + " (" + s.direction + "): " + s.state + ", " + done + " of " + s.planned_trials + " trials" + (s.best ? "; best trial " + s.best.number + (s.best.adapter ? " → " + s.best.adapter : "") : "") + (s.error ? " — " + s.error : "");
    const actions = [];
    if (["queued", "running"].includes(s.state) && !s.cancel_requested) actions.push(el("button", { type: "button", "aria-label": "Cancel sweep " + s.id, onclick: () => guarded("sweep-error", () => api("POST", "/v1/tune/sweeps/" + s.id + "/cancel").then(refreshTuning)) }, "Cancel"));
    if (s.report) actions.push(el("button", { type: "button", "aria-label": "Open report of sweep " + s.id, onclick: () => guarded("sweep-error", async () => { const f = $("sweep-report"); f.srcdoc = await api("GET", "/v1/tune/sweeps/" + s.id + "/report"); f.hidden = false; }) }, "Open report"));
    return el("li", { "data-state": s.state }, head, " ", ...actions, el("ol", {}, ...s.trials.map((t) => el("li", {}, trialText(t)))));
  }));
  return { live: data.sweeps.some((s) => ["queued", "running"].includes(s.state)), states: data.sweeps.map((s) => s.id + s.state + s.trials.length).join() };
}
function probeText(m) {
  const p = m && m.probe;
  if (!p || p.probe_nll_delta == null) return "";
  const sign = (x) => (x >= 0 ? "+" : "") + x.toFixed(3);
  return "; forgetting probe: NLL " + sign(p.probe_nll_delta) + ", accuracy " + sign(p.probe_accuracy_delta) + (p.forgetting ? " — FORGETTING: " + p.forgetting_reasons.join("; ") : "");
}
function gateText(g) {
  if (!g) return "eval gate not run";
  const rest = Object.entries(g).filter(([k]) => k !== "passed").map(([k, v]) => k === "checked" ? "checked " + when(v) : k + " " + (typeof v === "number" ? Number(v.toPrecision(3)) : JSON.stringify(v))).join(", ");
  return "eval gate " + (g.passed ? "passed" : "FAILED") + (rest ? " (" + rest + ")" : "");
}
function metricText(m) {
  const keys = Object.keys(m || {}).filter((k) => typeof m[k] === "number").sort().slice(0, 6);
  return keys.length ? "; " + keys.map((k) => k + " " + Number(m[k].toPrecision(4))).join(", ") : "";
}
async function adapterAction(fn) {
  $("adapter-status").textContent = "";
  await guarded("adapter-error", async () => { $("adapter-status").textContent = await fn(); await refreshTuning(); });
}
async function loadAdapters() {
  const data = await api("GET", "/v1/adapters");
  const embedders = [];
  $("adapters").replaceChildren(...data.adapters.map((a) => {
    if (a.component === "retriever") embedders.push(a);
    const lineage = a.lineage && a.lineage.length > 1 ? "; lineage " + a.lineage.join(" → ") : "";
    const flags = [a.promoted ? el("strong", {}, " promoted") : "", a.stale ? el("span", { class: "stale" }, " stale: " + (a.stale_reason || "its documents changed")) : ""];
    const actions = [];
    if (a.component === "generator" && a.servable) {
      if (!a.loaded) actions.push(el("button", { type: "button", "aria-label": "Load " + a.id + " for chat", onclick: () => adapterAction(async () => { await api("POST", "/v1/adapters/" + encodeURIComponent(a.id) + "/load"); await loadModels(); return "Loaded " + a.id + ": pick it in the chat's adapter list."; }) }, "Load for chat"));
      if (!a.promoted) actions.push(el("button", { type: "button", "aria-label": "Promote " + a.id, onclick: () => adapterAction(async () => { const r = await api("POST", "/v1/adapters/" + encodeURIComponent(a.id) + "/promote"); return "Promoted " + r.id + " (" + gateText(r.eval_gate) + "): ft and hybrid use it by default."; }) }, "Promote"));
    }
    actions.push(el("button", { type: "button", "aria-label": "Delete " + a.id, onclick: () => window.confirm("Delete adapter " + a.id + "? Its files are removed.") && adapterAction(async () => { await api("DELETE", "/v1/adapters/" + encodeURIComponent(a.id)); return "Deleted " + a.id + "."; }) }, "Delete"));
    return el("li", { "data-adapter": a.id },
      a.id + " — " + a.component + "/" + a.method + " on " + (a.base_model || "?") + lineage + "; " + gateText(a.eval_gate) + metricText(a.metrics) + probeText(a.metrics) + (a.loaded ? "; loaded" : ""),
      ...flags, " ", ...actions);
  }));
  return embedders;
}
async function loadIndex(embedders) {
  const info = await api("GET", "/v1/index");
  const name = (e) => (e ? (e.adapter ? "fine-tuned " + e.adapter + " on " : "") + e.name + (e.dim ? " (" + e.dim + " dimensions)" : "") : "none");
  $("index-info").textContent = info.documents + " documents, " + info.chunks + " passages; embedder " + name(info.embedder) + "; previous embedder " + name(info.previous_embedder) + (info.needs_reembedding ? "; an older index: re-embed it" : "") + ".";
  const current = info.embedder && info.embedder.name;
  $("reindex-to").replaceChildren(...embedders.map((a) => el("option", { value: a.id }, "fine-tuned embedder " + a.id)), el("option", { value: "" }, "the embedder in use, " + (current || "?") + " (rebuild its vectors)"));
  $("rollback").disabled = !info.previous_embedder;
  const r = info.reindex;
  $("index-status").textContent = r.state === "idle" ? "" : "Re-embedding " + r.state + (r.total ? ": " + r.done + " of " + r.total + " passages" : "") + (r.error ? " — " + r.error : "");
  return r.state === "running";
}
// One polling cycle: jobs and sweeps every time; adapters and the index only when a job or
// sweep changed state, or while a re-embedding runs (each cycle costs 2 to 6 requests).
let tuneTimer = null, tuneSeen = null, indexLive = false, wasLive = false;
async function loadTuning() {
  clearTimeout(tuneTimer);
  let live = false, states = "", ok = true;
  ok = (await guarded("tune-error", async () => { const r = await loadJobs(); live = live || r.live; states += r.states; })) && ok;
  ok = (await guarded("sweep-error", async () => { const r = await loadSweeps(); live = live || r.live; states += "|" + r.states; })) && ok;
  if (!ok) states = tuneSeen;  // unknown this cycle: change nothing
  if (states !== tuneSeen || indexLive) {
    let embedders = [];
    const got = await guarded("adapter-error", async () => { embedders = await loadAdapters(); });
    const gotIndex = await guarded("index-error", async () => { indexLive = await loadIndex(embedders); });
    if (got && gotIndex) tuneSeen = states; else ok = false;
  }
  // one cycle more once everything ended: a retriever job starts its re-embedding just after
  const again = live || indexLive || wasLive || (!ok && backoffUntil > Date.now());
  wasLive = live || indexLive;
  if (again && !$("page-tuning").hidden) tuneTimer = setTimeout(loadTuning, nextPoll());
}
function refreshTuning() { tuneSeen = null; return loadTuning(); }
function numberOrNull(id) { const v = $(id).value.trim(); return v === "" ? null : Number(v); }
$("tune-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  await guarded("tune-error", async () => {
    const source = $("tune-source").value, method = $("tune-method").value;
    let dataset;
    if (source === "file") {
      let id = $("tune-file").value.trim();
      const upload = $("tune-upload").files[0];
      if (upload) { const form = new FormData(); form.append("file", upload); id = (await api("POST", "/v1/files", form, true)).id; $("tune-file").value = id; }
      if (!id) throw new ApiError("Training data: upload a file or give a file id.");
      dataset = id;
    } else if (source === "feedback") {
      dataset = { feedback: {} };
    } else {
      dataset = { synthetic: { kind: source } };
    }
    const hp = { epochs: numberOrNull("tune-epochs") || 1, rank: numberOrNull("tune-rank") || 8 };
    const lr = numberOrNull("tune-lr"), steps = numberOrNull("tune-steps");
    if (lr != null) hp.learning_rate = lr;
    if (steps != null) hp.max_steps = steps;
    for (const [k, v] of Object.entries(hp)) if (!Number.isFinite(v)) throw new ApiError("Not accepted (hyperparameters." + k + "): a number is needed.");
    const body = { component: $("tune-component").value, method, dataset, hyperparameters: hp };
    if (body.component === "retriever") body.retriever = { activate: $("tune-activate").checked };
    if ($("tune-sweep").checked) {
      const low = numberOrNull("sweep-low"), high = numberOrNull("sweep-high");
      if (!(low > 0 && high > low)) throw new ApiError("Not accepted (sweep): the lowest rate must be above 0 and below the highest.");
      body.sweep = { trials: numberOrNull("sweep-trials") || 4, space: { "hyperparameters.learning_rate": { type: "log_uniform", low, high } } };
    }
    await api("POST", "/v1/tune/jobs", body);
    await refreshTuning();
  });
});
$("reindex-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const to = $("reindex-to").value;
  guarded("index-error", async () => {
    await api("POST", "/v1/index/reindex", to ? { adapter: to } : { refresh: true });
    await refreshTuning();
  });
});
$("rollback").addEventListener("click", () => {
  if (!window.confirm("Re-embed the index with the previous embedder?")) return;
  guarded("index-error", async () => { await api("POST", "/v1/index/reindex", { rollback: true }); await refreshTuning(); });
});
fillMethods();
loaders.tuning = refreshTuning;

// ---- evaluation ----------------------------------------------------------------------------
let evalTimer = null;
async function openReport(r) {
  await guarded("eval-error", async () => {
    const f = $("eval-report");
    f.srcdoc = await api("GET", "/v1/eval/runs/" + r.id + "/report");
    f.hidden = false;
    f.focus();
  });
}
async function loadEvals() {
  clearTimeout(evalTimer);
  let live = false;
  const ok = await guarded("eval-error", async () => {
    const data = await api("GET", "/v1/eval/runs");
    const list = data.runs;
    $("eval-runs").replaceChildren(...list.map((r) => el("li", { "data-state": r.state },
      r.id + " (" + r.modes.join(", ") + "): " + r.state + (r.progress.total ? ", " + r.progress.done + " of " + r.progress.total + " answers" : "") + (r.error ? " — " + r.error : "") + " ",
      LIVE.includes(r.state) && !r.cancel_requested ? el("button", { type: "button", "aria-label": "Cancel run " + r.id, onclick: () => guarded("eval-error", () => api("POST", "/v1/eval/runs/" + r.id + "/cancel").then(loadEvals)) }, "Cancel") : "",
      r.state === "succeeded" ? el("button", { type: "button", "aria-label": "Open report " + r.id, onclick: () => openReport(r) }, "Open report") : "")));
    live = list.some((r) => LIVE.includes(r.state));
  });
  if ((live || (!ok && backoffUntil > Date.now())) && !$("page-evals").hidden) evalTimer = setTimeout(loadEvals, nextPoll());
}
$("eval-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const modes = [...document.querySelectorAll("input[name=eval-mode]:checked")].map((x) => x.value);
  await guarded("eval-error", async () => {
    const file = $("eval-file").files[0];
    if (!file) throw new ApiError("Dataset: choose a file first.");
    if (!modes.length) throw new ApiError("Modes: tick at least one.");
    const form = new FormData(); form.append("file", file);
    const up = await api("POST", "/v1/files", form, true);
    await api("POST", "/v1/eval/runs", { dataset: up.id, modes });
    await loadEvals();
  });
});
loaders.evals = loadEvals;

// ---- feedback ------------------------------------------------------------------------------
const FB_PAGE = 20;
let fbOffset = 0;
function fbQuery(offset, limit) {
  const q = new URLSearchParams({ offset: String(offset), limit: String(limit) });
  if ($("fb-rating").value) q.set("rating", $("fb-rating").value);
  const since = $("fb-since").value;
  if (since) q.set("since", String(Date.parse(since + "T00:00:00") / 1000));
  return "/v1/feedback?" + q;
}
function fbItem(f) {
  const a = f.answer;
  const question = a && a.messages ? a.messages.filter((m) => m.role === "user").map((m) => m.content).slice(-1)[0] : "";
  return el("li", { "data-rating": f.rating },
    el("strong", {}, f.rating === "up" ? "Rated up" : "Rated down"), " — ", question ? "“" + question + "” " : "", a ? "→ " + a.answer + " (" + a.mode + (a.adapter ? ", " + a.adapter : "") + ")" : "(answer " + f.answer_id + ", no longer kept)",
    f.correction ? el("p", {}, "Better answer: " + f.correction) : "", f.comment ? el("p", {}, "Comment: " + f.comment) : "",
    f.stale && f.stale.length ? el("p", { class: "stale" }, "Stale: " + f.stale.join("; ")) : "");
}
async function loadFeedback() {
  await guarded("fb-error", async () => {
    const data = await api("GET", fbQuery(fbOffset, FB_PAGE));
    $("fb-rows").replaceChildren(...data.feedback.map(fbItem));
    pager("fb", fbOffset, data.feedback.length, data.total, " ratings", "No ratings match.");
  });
}
$("fb-filter").addEventListener("submit", (e) => { e.preventDefault(); fbOffset = 0; loadFeedback(); });
$("fb-prev").addEventListener("click", () => { fbOffset = Math.max(0, fbOffset - FB_PAGE); loadFeedback(); });
$("fb-next").addEventListener("click", () => { fbOffset += FB_PAGE; loadFeedback(); });
$("fb-export").addEventListener("click", () => guarded("fb-error", async () => {
  const rows = [];  // every page of the current filter, one JSON object per line
  for (let offset = 0; ; offset += 500) {
    const data = await api("GET", fbQuery(offset, 500));
    rows.push(...data.feedback);
    if (!data.feedback.length || rows.length >= data.total) break;
  }
  const blob = new Blob([rows.map((r) => JSON.stringify(r)).join("\n") + (rows.length ? "\n" : "")], { type: "application/x-ndjson" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "feedback.jsonl" });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 0);
  $("fb-page").textContent = "Exported " + rows.length + " ratings to feedback.jsonl.";
}));
loaders.feedback = loadFeedback;

show("chat");
