// hiseg-sim annotation page: draws the env's view and sends the person's actions, one at a time, in order.
//
// Coordinates sent to the server are viewport pixels: points (x, y) with x the column and y the row,
// boxes XYXY, pixel centres at integers (the centre of displayed pixel i is i). Every action carries
// the page clock (Date.now(), ms) when the person acted and the pointer's (x, y), or null off the image.
// Actions are numbered (seq): a retried request is never applied twice, so after a lost connection or
// a server restart the page simply sends again until the server answers.
"use strict";

const SESSION_KEY = "hiseg-annotate-session";
const $ = (id) => document.getElementById(id);
const canvas = $("view");
const ctx = canvas.getContext("2d");

const page = {
  state: null,          // the last SessionState from the server
  view: null,           // the SliceView drawn (the state's, or a feedback slice)
  pending: 0,           // requests sent and not yet answered
  queue: Promise.resolve(),
  pointer: null,        // [x, y] viewport pixels of the pointer over the image, or null
  drag: null,           // {start: [x, y], sx, sy, box: bool, negative: bool} while a button is down
  wheel: 0,
  latencies: [],        // ms from the person's action to the mask drawn, per action
};
window.hiseg = {
  idle: () => page.pending === 0,
  state: () => page.state,
  latencies: () => page.latencies.slice(),
};

// ---- server ------------------------------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function call(method, url, body) {
  // Retries while the server cannot be reached; returns {ok, status, data}.
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await fetch(url, {method, headers: {"Content-Type": "application/json"},
                                  body: body === undefined ? undefined : JSON.stringify(body)});
      const data = await r.json().catch(() => ({detail: `server answered ${r.status}`}));
      if (attempt > 0) status("Connection back; nothing was lost.");
      return {ok: r.ok, status: r.status, data};
    } catch (e) {
      status("Connection to the server lost; retrying…");
      await sleep(Math.min(2000, 200 * 2 ** attempt));
    }
  }
}

function enqueue(task) {
  page.pending++;
  page.queue = page.queue.then(task).catch((e) => showError(String(e))).finally(() => { page.pending--; });
  return page.queue;
}

function status(text) { $("status").textContent = text; }
function showError(text) { $("error").textContent = text || ""; }

// ---- decoding what the server sends ----------------------------------------------------------------
function bytes(b64) {
  const s = atob(b64), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
function bits(b64, n) {                       // numpy.packbits, first pixel in the high bit
  const b = bytes(b64), out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (b[i >> 3] >> (7 - (i & 7))) & 1;
  return out;
}

// ---- drawing ---------------------------------------------------------------------------------------
function layer(size, fill) {                  // an offscreen size x size canvas filled pixel by pixel
  const c = document.createElement("canvas");
  c.width = c.height = size;
  const g = c.getContext("2d"), img = g.createImageData(size, size);
  fill(img.data);
  g.putImageData(img, 0, 0);
  return c;
}

function outlineOf(m, size) {                 // inside pixels with an outside 4-neighbour
  const o = new Uint8Array(m.length);
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) {
    const i = y * size + x;
    if (!m[i]) continue;
    if (x === 0 || y === 0 || x === size - 1 || y === size - 1 || !m[i - 1] || !m[i + 1] || !m[i - size] || !m[i + size]) o[i] = 1;
  }
  return o;
}

function draw() {
  const st = page.state, v = page.view;
  if (!st || !v) return;
  const size = st.size, s = canvas.width / size, n = size * size;
  const gray = bytes(v.image), mask = bits(v.mask, n), edge = outlineOf(mask, size);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(layer(size, (d) => { for (let i = 0; i < n; i++) { d[4*i] = d[4*i+1] = d[4*i+2] = gray[i]; d[4*i+3] = 255; } }),
                0, 0, canvas.width, canvas.height);
  ctx.drawImage(layer(size, (d) => { for (let i = 0; i < n; i++) if (mask[i]) {
    d[4*i] = 255; d[4*i+1] = 140; d[4*i+2] = 0; d[4*i+3] = edge[i] ? 255 : 100; } }), 0, 0, canvas.width, canvas.height);
  if (v.reference) {
    const ref = outlineOf(bits(v.reference, n), size);
    ctx.drawImage(layer(size, (d) => { for (let i = 0; i < n; i++) if (ref[i]) {
      d[4*i] = 0; d[4*i+1] = 230; d[4*i+2] = 255; d[4*i+3] = 255; } }), 0, 0, canvas.width, canvas.height);
  }
  const px = (c) => (c + 0.5) * s;
  if (v.prompts.box) {
    const [x0, y0, x1, y1] = v.prompts.box;
    ctx.strokeStyle = "#ffe600"; ctx.lineWidth = 2; ctx.setLineDash([]);
    ctx.strokeRect(px(x0), px(y0), px(x1) - px(x0), px(y1) - px(y0));
  }
  for (const [x, y, label] of v.prompts.points) {
    ctx.beginPath(); ctx.arc(px(x), px(y), 6, 0, 2 * Math.PI);
    ctx.fillStyle = label ? "#28dc3c" : "#eb2828"; ctx.fill();
    ctx.lineWidth = 2; ctx.strokeStyle = "#000"; ctx.stroke();
  }
  const d = page.drag;
  if (d && d.box && page.pointer) {
    ctx.strokeStyle = "#ffe600"; ctx.lineWidth = 1.5; ctx.setLineDash([6, 4]);
    ctx.strokeRect(px(d.start[0]), px(d.start[1]), px(page.pointer[0]) - px(d.start[0]), px(page.pointer[1]) - px(d.start[1]));
    ctx.setLineDash([]);
  }
}

const SHOWN_CODES = {nothing_to_undo: "Nothing to undo on this slice.", nothing_to_accept: "Prompt the nodule before accepting.",
  no_slice_there: "No slice there.", nothing_to_propagate: "No mask on this slice to propagate.",
  zero_area_box: "The box was too small.", prompt_rejected: "The model could not use that prompt."};

function render(st) {
  page.state = st;
  $("start").hidden = true;
  $("work").hidden = st.phase === "done";
  $("done").hidden = st.phase !== "done";
  $("who").textContent = `${st.participant} · ${st.group} · ${st.study}`;
  $("progress").textContent = st.phase === "done" ? "" : `Nodule ${st.case_index + 1} of ${st.n_cases}`;
  if (st.phase === "done") { localStorage.removeItem(SESSION_KEY); return; }
  page.view = st.view;
  const annotating = st.phase === "annotating";
  for (const b of document.querySelectorAll("#tools button")) b.disabled = !annotating;
  for (const id of ["prev", "next-slice", "prop-prev", "prop-next"]) $(id).hidden = st.n_slices < 2;
  $("feedback").hidden = annotating;
  if (!annotating) showFeedback(st);
  showSlice();
  const msg = SHOWN_CODES[st.invalid_action];
  if (annotating && msg) status(msg);
  draw();
}

function showSlice() {
  const st = page.state, k = page.view.slice;
  $("slice-info").textContent = st.n_slices > 1 ? `Slice ${k + 1} of ${st.n_slices}` : "Key slice";
  const bar = $("slicebar");
  bar.hidden = st.n_slices < 2;
  bar.replaceChildren(...Array.from({length: st.n_slices}, (_, i) => {
    const c = document.createElement("span");
    if (st.slices_with_mask.includes(i)) c.classList.add("mask");
    if (i === k) c.classList.add("current");
    return c;
  }));
}

function showFeedback(st) {
  const fb = st.feedback || {mode: "none"};
  const last = st.case_index + 1 >= st.n_cases;
  $("next-case").firstChild.textContent = last ? "Finish " : "Next nodule ";
  $("feedback-legend").hidden = fb.mode !== "worked_example";
  if (fb.mode === "none") $("feedback-text").textContent = "Saved.";
  else $("feedback-text").textContent = `Agreement with the reference (Dice): ${fb.dice.toFixed(2)} · your time: ${Math.round(fb.seconds)} s`
    + (fb.mode === "worked_example" ? ". Scroll to compare your mask with the reference on each slice." : "");
}

// ---- actions ---------------------------------------------------------------------------------------
function send(action, pointer) {
  const st = page.state;
  if (!st || st.phase !== "annotating") return;
  const t0 = performance.now(), clientMs = Date.now();
  status("Saving…");
  enqueue(async () => {
    if (page.state.phase !== "annotating") return;      // accepted meanwhile: later actions are dropped
    const body = {seq: page.state.next_seq, action, client_ms: clientMs, pointer};
    const r = await call("POST", `/api/sessions/${st.session_id}/actions`, body);
    if (!r.ok) { showError(r.data.detail); await reload(); return; }
    showError("");
    render(r.data);
    requestAnimationFrame(() => {
      const ms = performance.now() - t0;
      page.latencies.push(ms);
      if (!SHOWN_CODES[r.data.invalid_action]) status(`Saved · mask shown ${Math.round(ms)} ms after the action`);
    });
  });
}

async function reload() {
  const sid = page.state && page.state.session_id;
  if (!sid) return;
  const r = await call("GET", `/api/sessions/${sid}`);
  if (r.ok) render(r.data);
}

async function feedbackScroll(dk) {            // after Accept: look at other slices (not an action)
  const st = page.state, k = page.view.slice + dk;
  if (!st || st.phase !== "feedback" || k < 0 || k >= st.n_slices) return;
  enqueue(async () => {
    const r = await call("GET", `/api/sessions/${st.session_id}/slices/${k}`);
    if (r.ok) { page.view = r.data; showSlice(); draw(); }
  });
}

function nextCase() {
  const st = page.state;
  if (!st || st.phase !== "feedback") return;
  const clientMs = Date.now();
  enqueue(async () => {
    const r = await call("POST", `/api/sessions/${st.session_id}/next`, {case_index: st.case_index + 1, client_ms: clientMs});
    if (!r.ok) { showError(r.data.detail); await reload(); return; }
    status(""); render(r.data);
  });
}

const slab = () => page.state && page.state.n_slices > 1;   // the 2-D env has no slices to move to
const scroll = (dk) => !slab() ? null : page.state.phase === "feedback" ? feedbackScroll(dk)
  : send({kind: dk > 0 ? "next" : "prev"}, page.pointer);
const ACTIONS = {
  undo: () => send({kind: "undo"}, page.pointer),
  next: () => scroll(1),
  prev: () => scroll(-1),
  propNext: () => slab() && send({kind: "propagate", direction: 1}, page.pointer),
  propPrev: () => slab() && send({kind: "propagate", direction: -1}, page.pointer),
  accept: () => send({kind: "accept"}, page.pointer),
};

// ---- input -----------------------------------------------------------------------------------------
function toViewport(ev) {                       // page event → (x, y) viewport pixels, clamped to the image
  const r = canvas.getBoundingClientRect(), size = page.state.size;
  const c = (v, lo, len) => Math.min(size - 1, Math.max(0, (v - lo) * size / len - 0.5));
  return [Math.round(c(ev.clientX, r.left, r.width) * 100) / 100, Math.round(c(ev.clientY, r.top, r.height) * 100) / 100];
}

canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
canvas.addEventListener("mousedown", (ev) => {
  if (!page.state || page.state.phase !== "annotating" || ev.button > 2) return;
  canvas.focus();
  page.pointer = toViewport(ev);
  page.drag = {start: page.pointer, sx: ev.clientX, sy: ev.clientY, box: false,
               negative: ev.button === 2 || ev.shiftKey || ev.altKey};
});
canvas.addEventListener("mousemove", (ev) => {
  if (!page.state) return;
  page.pointer = toViewport(ev);
  const d = page.drag;
  if (d && Math.hypot(ev.clientX - d.sx, ev.clientY - d.sy) > 4) d.box = true;
  if (d && d.box) draw();
});
canvas.addEventListener("mouseleave", () => { page.pointer = null; });
window.addEventListener("mouseup", (ev) => {
  const d = page.drag;
  if (!d) return;
  page.drag = null;
  const end = ev.target === canvas ? toViewport(ev) : page.pointer || d.start;
  if (d.box) send({kind: "box", x0: d.start[0], y0: d.start[1], x1: end[0], y1: end[1]}, end);
  else send({kind: "point", x: d.start[0], y: d.start[1], positive: !d.negative}, d.start);
});
canvas.addEventListener("wheel", (ev) => {
  ev.preventDefault();
  page.wheel += ev.deltaY;
  if (Math.abs(page.wheel) >= 50) { scroll(Math.sign(page.wheel)); page.wheel = 0; }
}, {passive: false});

document.addEventListener("keydown", (ev) => {
  if (!page.state || ev.target.tagName === "INPUT" || ev.repeat && ev.key === "Enter") return;
  const k = ev.key, fb = page.state.phase === "feedback";
  let act = null;
  if (k === "ArrowDown" || k === "PageDown") act = ACTIONS.next;
  else if (k === "ArrowUp" || k === "PageUp") act = ACTIONS.prev;
  else if (fb && (k === "Enter" || k === "n")) act = nextCase;
  else if (!fb && (k === "z" || k === "Z" || k === "Backspace")) act = ACTIONS.undo;
  else if (!fb && k === "p") act = ACTIONS.propNext;
  else if (!fb && k === "P") act = ACTIONS.propPrev;
  else if (!fb && k === "Enter") act = ACTIONS.accept;
  if (act) { ev.preventDefault(); act(); }
});

$("undo").addEventListener("click", ACTIONS.undo);
$("prev").addEventListener("click", ACTIONS.prev);
$("next-slice").addEventListener("click", ACTIONS.next);
$("prop-prev").addEventListener("click", ACTIONS.propPrev);
$("prop-next").addEventListener("click", ACTIONS.propNext);
$("accept").addEventListener("click", ACTIONS.accept);
$("next-case").addEventListener("click", nextCase);

// ---- start and resume ------------------------------------------------------------------------------
$("start-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const body = {participant: $("participant").value.trim(), group: $("group").value.trim(),
                study: $("study").value.trim(), client_ms: Date.now()};
  enqueue(async () => {
    const r = await call("POST", "/api/sessions", body);
    if (!r.ok) { $("start-error").textContent = typeof r.data.detail === "string" ? r.data.detail
                   : "Ids, group and study are letters, digits, _ or - (at most 64)."; return; }
    localStorage.setItem(SESSION_KEY, r.data.session_id);
    render(r.data);
    canvas.focus();
  });
});

(function boot() {
  const q = new URLSearchParams(location.search);
  for (const f of ["participant", "group", "study"]) if (q.get(f)) $(f).value = q.get(f);
  const sid = localStorage.getItem(SESSION_KEY);
  if (!sid) return;
  enqueue(async () => {
    const r = await call("GET", `/api/sessions/${sid}`);
    if (r.ok) render(r.data);
    else localStorage.removeItem(SESSION_KEY);
  });
})();
