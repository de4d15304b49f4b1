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

// One clear sentence for each answer the API can refuse with.
function sentence(status, body, retryAfter) {
  const msg = body && body.error && body.error.message ? body.error.message : "";
  switch (status) {
    case 401: return "The server needs an API key: enter one above. " + msg;
    case 403: return "This key may not do that (or this page's origin is refused). " + msg;
    case 404: return "Not found: " + (msg || "it may have been deleted.");
    case 409: return "Conflict: " + (msg || "it changed or is busy; reload and retry.");
    case 413: return "Too large: " + (msg || "the request is over the server's size limit.");
    case 422: {
      const d = body && body.error && body.error.details;
      const loc = d && d.loc ? " (" + [].concat(d.loc).join(".") + ")" : "";
      return "Not accepted" + loc + ": " + (msg || "check the fields.");
    }
    case 429: return "Too many requests: wait " + (retryAfter || "a few") + " seconds and retry.";
    default: return "The server answered " + status + ". " + msg;
  }
}

class ApiError extends Error {}

async function api(method, path, body, isForm) {
  const opts = { method, headers: headers(isForm || body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) opts.body = isForm ? body : JSON.stringify(body);
  const r = await fetch(path, opts);
  if (!r.ok) {
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    throw new ApiError(sentence(r.status, data, r.headers.get("Retry-After")));
  }
  const type = r.headers.get("Content-Type") || "";
  return type.includes("json") ? r.json() : r.text();
}

async function guarded(errorId, fn) {
  const el = $(errorId);
  el.textContent = "";
  try { return await fn(); } catch (e) { el.textContent = e instanceof ApiError ? e.message : "Could not reach the server: " + e.message; }
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
function show(page) {
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
  loadModels();
});

// ---- chat ----------------------------------------------------------------------------------
let baseModel = "";
async function loadModels() {
  await guarded("ask-error", async () => {
    const data = await api("GET", "/v1/models");
    const ids = data.data.map((m) => m.id);
    baseModel = ids[0];
    const sel = $("adapter");
    sel.replaceChildren(...(ids.length > 1 ? ids.slice(1).map((id) => el("option", { value: id }, id)) : [el("option", { value: "" }, "(none loaded)")]));
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

function feedbackControls(answerId) {
  const status = el("p", { role: "status" });
  const send = (rating, correction) => api("POST", "/v1/feedback", Object.assign({ answer_id: answerId, rating }, correction ? { correction } : {}))
    .then(() => { status.textContent = "Thanks: rated " + rating + (correction ? " with a better answer." : "."); },
      (e) => { status.textContent = e.message; status.className = "error"; });
  const better = el("textarea", { rows: "2", id: "better-" + answerId });
  return el("div", { class: "feedback" },
    el("button", { type: "button", "aria-label": "Good answer", onclick: () => send("up") }, "👍 Good"),
    " ",
    el("button", { type: "button", "aria-label": "Bad answer", onclick: () => send("down") }, "👎 Bad"),
    el("label", { for: "better-" + answerId }, "Suggest a better answer"), better,
    el("button", { type: "button", onclick: () => better.value.trim() && send("down", better.value.trim()) }, "Send the better answer"),
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
  const item = el("li", {}, el("p", {}, el("strong", {}, "Q: "), q), text, cites);
  $("answers").prepend(item);
  await guarded("ask-error", async () => {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
    if (!r.ok) { let d = null; try { d = await r.json(); } catch (x) { /* */ } item.remove(); throw new ApiError(sentence(r.status, d, r.headers.get("Retry-After"))); }
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
    if (id) item.append(feedbackControls(id));
  });
});
loaders.chat = loadModels;

// ---- documents -----------------------------------------------------------------------------
const PAGE = 20;
let docOffset = 0, docTotal = 0, docRows = [];
function renderDocs() {
  const f = $("doc-filter").value.trim().toLowerCase();
  $("doc-rows").replaceChildren(...docRows.filter((d) => !f || d.id.toLowerCase().includes(f)).map((d) => el("tr", {},
    el("td", {}, d.id), el("td", {}, String(d.chunks != null ? d.chunks : "")),
    el("td", {},
      el("button", { type: "button", "aria-label": "Edit " + d.id, onclick: () => editDoc(d.id) }, "Edit"), " ",
      el("button", { type: "button", "aria-label": "Delete " + d.id, onclick: () => deleteDoc(d.id) }, "Delete")))));
  const last = Math.min(docOffset + PAGE, docTotal);
  $("doc-page").textContent = docTotal ? (docOffset + 1) + "–" + last + " of " + docTotal : "No documents yet.";
  $("doc-prev").disabled = docOffset === 0;
  $("doc-next").disabled = last >= docTotal;
}
async function loadDocs() {
  await guarded("doc-list-error", async () => {
    const data = await api("GET", "/v1/documents?offset=" + docOffset + "&limit=" + PAGE);
    docTotal = data.total; docRows = data.documents; renderDocs();
  });
}
async function editDoc(id) {
  await guarded("doc-error", async () => {
    const d = await api("GET", "/v1/documents/" + encodeURIComponent(id));
    $("doc-id").value = d.id; $("doc-text").value = d.text; $("doc-text").focus();
  });
}
async function deleteDoc(id) {
  if (!window.confirm("Delete document " + id + "? Its passages leave the index.")) return;
  await guarded("doc-list-error", async () => { await api("DELETE", "/v1/documents/" + encodeURIComponent(id)); await loadDocs(); });
}
$("doc-filter").addEventListener("input", renderDocs);
$("doc-search").addEventListener("submit", (e) => e.preventDefault());
$("doc-prev").addEventListener("click", () => { docOffset = Math.max(0, docOffset - PAGE); loadDocs(); });
$("doc-next").addEventListener("click", () => { docOffset += PAGE; loadDocs(); });
$("doc-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = $("doc-id").value.trim(), text = $("doc-text").value;
  await guarded("doc-error", async () => {
    if (id && docRows.some((d) => d.id === id)) await api("PUT", "/v1/documents/" + encodeURIComponent(id), { text });
    else await api("POST", "/v1/documents", id ? { id, text } : { text });
    $("doc-id").value = ""; $("doc-text").value = "";
    await loadDocs();
  });
});
$("upload-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("upload-results").replaceChildren();
  for (const file of $("upload-files").files) {
    const form = new FormData();
    form.append("files", file);
    let line;
    try { const r = await api("POST", "/v1/documents/upload", form, true); line = file.name + ": added (" + JSON.stringify(r.ids || r.documents || r).slice(0, 120) + ")"; }
    catch (x) { line = file.name + ": " + x.message; }
    $("upload-results").append(el("li", {}, line));
  }
  await loadDocs();
});
loaders.documents = loadDocs;

// ---- tuning --------------------------------------------------------------------------------
let tuneTimer = null;
function drawLoss(curve) {
  const c = $("loss-chart"), g = c.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, c.width, c.height);
  if (!curve || curve.length < 1) return;
  const ys = curve.map((p) => p[1]), lo = Math.min(...ys), hi = Math.max(...ys) || 1;
  const maxX = Math.max(...curve.map((p) => p[0])) || 1;
  g.strokeStyle = "#0b5394"; g.lineWidth = 2; g.beginPath();
  curve.forEach((p, i) => {
    const x = 10 + (p[0] / maxX) * (c.width - 20), y = c.height - 10 - ((p[1] - lo) / ((hi - lo) || 1)) * (c.height - 20);
    if (i) g.lineTo(x, y); else g.moveTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#1a1a1a"; g.fillText("loss " + ys[ys.length - 1].toFixed(3), 12, 14);
}
async function loadTuning() {
  await guarded("tune-error", async () => {
    const jobs = await api("GET", "/v1/tune/jobs");
    const list = jobs.jobs || jobs.data || jobs;
    $("jobs").replaceChildren(...list.map((j) => el("li", { "data-state": j.state },
      j.id + " — " + j.component + "/" + j.method + ": " + j.state + " (step " + j.progress.step + (j.progress.total ? " of " + j.progress.total : "") + ")" + (j.eta_s != null ? ", about " + Math.round(j.eta_s) + " s left" : "") + (j.error ? " — " + j.error : ""),
      ["queued", "running", "validating"].includes(j.state) ? el("button", { type: "button", "aria-label": "Cancel job " + j.id, onclick: () => guarded("tune-error", () => api("POST", "/v1/tune/jobs/" + j.id + "/cancel").then(loadTuning)) }, "Cancel") : "")));
    if (list.length) drawLoss((await api("GET", "/v1/tune/jobs/" + list[0].id)).loss_curve);
    const running = list.some((j) => ["queued", "running", "validating"].includes(j.state));
    clearTimeout(tuneTimer);
    if (running && !$("page-tuning").hidden) tuneTimer = setTimeout(loadTuning, 1000);
  });
  await guarded("adapter-error", async () => {
    const data = await api("GET", "/v1/adapters");
    const list = data.adapters || data.data || data;
    $("adapters").replaceChildren(...list.map((a) => el("li", {},
      (a.id || a.name) + " — " + (a.component || "") + "/" + (a.method || "") + (a.lineage && a.lineage.length ? ", lineage " + a.lineage.map((x) => typeof x === "string" ? x : (x.id || JSON.stringify(x))).join(" → ") : a.parent ? ", from " + a.parent : "") + (a.metrics ? ", metrics " + JSON.stringify(a.metrics) : "") + (a.forgetting != null ? ", forgetting " + JSON.stringify(a.forgetting) : ""),
      a.stale ? el("span", { class: "stale" }, " stale" + (a.stale_reason ? ": " + a.stale_reason : "")) : "",
      a.eval_gate ? " — eval gate: " + JSON.stringify(a.eval_gate).slice(0, 160) : "", " ",
      a.loaded ? "" : el("button", { type: "button", "aria-label": "Load " + a.name + " for chat", onclick: () => guarded("adapter-error", () => api("POST", "/v1/adapters/" + encodeURIComponent(a.name) + "/load").then(() => { loadModels(); loadTuning(); })) }, "Load for chat"), " ",
      el("button", { type: "button", "aria-label": "Promote " + (a.id || a.name), onclick: () => guarded("adapter-error", () => api("POST", "/v1/adapters/" + encodeURIComponent(a.id || a.name) + "/promote").then((r) => { $("adapter-error").textContent = "Promoted: " + JSON.stringify(r.gate || r).slice(0, 200); loadTuning(); })) }, "Promote"), " ",
      el("button", { type: "button", "aria-label": "Delete " + (a.id || a.name), onclick: () => window.confirm("Delete adapter " + (a.id || a.name) + "?") && guarded("adapter-error", () => api("DELETE", "/v1/adapters/" + encodeURIComponent(a.id || a.name)).then(loadTuning)) }, "Delete"))));
  });
  await guarded("index-error", async () => {
    const info = await api("GET", "/v1/index");
    $("index-info").textContent = "Embedder " + JSON.stringify(info.embedder || info).slice(0, 200);
  });
}
$("tune-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  await guarded("tune-error", async () => {
  let file = $("tune-file").value.trim();
  const upload = $("tune-upload").files[0];
  if (upload) { const form = new FormData(); form.append("file", upload); file = (await api("POST", "/v1/files", form, true)).id; }
  const body = {
    component: $("tune-component").value, method: $("tune-method").value,
    dataset: file ? file : { synthetic: { max_examples: 50 } },
    hyperparameters: { epochs: Number($("tune-epochs").value), learning_rate: Number($("tune-lr").value), max_steps: Number($("tune-steps").value) },
  };
  if ($("tune-sweep").checked) body.sweep = { trials: 4, space: { "hyperparameters.learning_rate": { type: "log_uniform", low: 1e-5, high: 1e-3 } } };
  await api("POST", "/v1/tune/jobs", body); await loadTuning();
  });
});
$("reindex").addEventListener("click", () => guarded("index-error", () => api("POST", "/v1/index/reindex", {}).then(loadTuning)));
loaders.tuning = loadTuning;

// ---- evaluation ----------------------------------------------------------------------------
let evalTimer = null;
async function loadEvals() {
  await guarded("eval-error", async () => {
    const data = await api("GET", "/v1/eval/runs");
    const list = data.runs || data.data || data;
    $("eval-runs").replaceChildren(...list.map((r) => el("li", { "data-state": r.state }, r.id + " (" + r.modes.join(", ") + "): " + r.state + (r.progress && r.progress.total ? ", " + r.progress.done + " of " + r.progress.total + " answers" : "") + (r.error ? " — " + r.error : "") + " ",
      r.state === "succeeded" ? el("button", { type: "button", "aria-label": "Open report " + r.id, onclick: () => { const f = $("eval-report"); f.hidden = false; api("GET", "/v1/eval/runs/" + r.id + "/report").then((html) => { f.srcdoc = html; }, (x) => { $("eval-error").textContent = x.message; }); } }, "Open report") : "")));
    clearTimeout(evalTimer);
    if (list.some((r) => ["queued", "validating", "running"].includes(r.state)) && !$("page-evals").hidden) evalTimer = setTimeout(loadEvals, 1500);
  });
}
$("eval-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const modes = [...document.querySelectorAll("input[name=eval-mode]:checked")].map((x) => x.value);
  await guarded("eval-error", async () => {
    const file = $("eval-file").files[0];
    if (!file) throw new ApiError("Choose a dataset file first.");
    const form = new FormData(); form.append("file", file);
    const up = await api("POST", "/v1/files", form, true);
    await api("POST", "/v1/eval/runs", { dataset: up.id, modes });
    await loadEvals();
  });
});
loaders.evals = loadEvals;

// ---- feedback ------------------------------------------------------------------------------
let fbRows = [];
async function loadFeedback() {
  await guarded("fb-error", async () => {
    const r = $("fb-rating").value;
    const data = await api("GET", "/v1/feedback" + (r ? "?rating=" + r : ""));
    fbRows = data.feedback || data.data || data;
    $("fb-rows").replaceChildren(...fbRows.map((f) => el("li", {}, f.rating + " — " + (f.answer && f.answer.messages ? f.answer.messages.map((m) => m.content).join(" / ") : f.answer_id) + (f.correction ? " — better: " + f.correction : ""), f.stale ? el("span", { class: "stale" }, " stale") : "")));
  });
}
$("fb-filter").addEventListener("submit", (e) => { e.preventDefault(); loadFeedback(); });
$("fb-export").addEventListener("click", () => {
  const a = el("a", { href: URL.createObjectURL(new Blob([JSON.stringify(fbRows, null, 2)], { type: "application/json" })), download: "feedback.json" });
  document.body.append(a); a.click(); a.remove();
});
loaders.feedback = loadFeedback;

show("chat");
