// duo serve page: POST /v1/generate/stream, read its Server-Sent Events, show each state.
"use strict";
const $ = (id) => document.getElementById(id);
const run = { states: [], done: null, shown: -1, queue: [], timer: null, totalSteps: 0 };

async function loadModel() {
  try {
    const info = await (await fetch("/v1/model")).json();
    $("model").textContent = `${info.algo} (${info.process} process) · ${info.checkpoint} · vocabulary ` +
      `${info.vocab_size} · up to ${info.max_length} tokens · limits: ${info.limits.max_steps} steps, ` +
      `${info.limits.max_samples} samples`;
    const select = $("sampler");
    for (const [name, spec] of Object.entries(info.samplers)) {
      const opt = document.createElement("option");
      opt.value = name;
      opt.textContent = name === info.default_sampler ? `${name} (default)` : name;
      if (name === info.default_sampler) opt.selected = true;
      select.appendChild(opt);
    }
    $("steps").max = info.limits.max_steps;
    $("n").max = info.limits.max_samples;
    if (info.default_steps) $("steps").value = info.default_steps;
  } catch (err) {
    $("model").textContent = "could not read /v1/model: " + err;
  }
}

function numberOrNull(id, integer) {
  const text = $(id).value.trim();
  if (text === "") return null;
  return integer ? parseInt(text, 10) : parseFloat(text);
}

function requestBody() {
  const body = { prompt: $("prompt").value, sampler: $("sampler").value || null,
                 steps: numberOrNull("steps", true), seed: numberOrNull("seed", true) ?? 0,
                 n: numberOrNull("n", true) ?? 1 };
  if ($("suffix").value) body.suffix = $("suffix").value;
  const topP = numberOrNull("top_p", false), temp = numberOrNull("temperature", false);
  if (topP !== null) body.top_p = topP;
  if (temp !== null) body.temperature = temp;
  return body;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function render(index) {
  const state = run.states[index];
  if (!state) return;
  run.shown = index;
  const box = $("samples");
  while (box.children.length < state.pieces.length) {
    const div = document.createElement("div");
    div.className = "sample";
    box.appendChild(div);
  }
  state.pieces.forEach((pieces, r) => {
    const changed = new Set(state.changed[r]);
    const div = box.children[r];
    div.replaceChildren(...pieces.map((piece, pos) => {
      const span = document.createElement("span");
      span.className = changed.has(pos) ? "tok changed" : "tok";
      span.textContent = piece;
      return span;
    }));
    div.dataset.text = state.texts ? state.texts[r] : pieces.join("");  // texts: the final state only
  });
  $("step").textContent = state.step;
  $("changed").textContent = state.num_changed;
  $("scrub").value = index;
  drawPlot();
}

function drawPlot() {
  const canvas = $("plot"), ctx = canvas.getContext("2d");
  const counts = run.states.map((s) => s.num_changed);
  const w = canvas.width, h = canvas.height, pad = 18;
  ctx.clearRect(0, 0, w, h);
  if (!counts.length) return;
  const max = Math.max(1, ...counts), bw = (w - 2 * pad) / Math.max(counts.length, run.totalSteps + 1);
  counts.forEach((c, i) => {
    ctx.fillStyle = i === run.shown ? "#1d2330" : "#8aa0ea";
    const bh = (h - 2 * pad) * c / max;
    ctx.fillRect(pad + i * bw, h - pad - bh, Math.max(1, bw - 1), bh);
  });
  ctx.fillStyle = "#6b7385";
  ctx.font = "11px sans-serif";
  ctx.fillText(`max ${max}`, 4, 12);
  ctx.fillText("step →", w - 46, h - 4);
}

// Play the states at most every `interval` ms, so the steps can be seen even when they come fast.
function schedule(interval) {
  if (run.timer) return;
  run.timer = setInterval(() => {
    if (run.queue.length) {
      render(run.queue.shift());
      $("scrub").max = run.states.length - 1;
    } else if (run.done) {
      clearInterval(run.timer);
      run.timer = null;
      finish();
    }
  }, interval);
}

function finish() {
  const d = run.done;
  $("nfe").textContent = d.nfe;
  $("tps").textContent = d.tokens_per_second.toFixed(1);
  $("secs").textContent = d.seconds.toFixed(3) + " s";
  const scrub = $("scrub");
  scrub.max = run.states.length - 1;
  scrub.disabled = false;
  render(run.states.length - 1);
  $("final").replaceChildren(...d.texts.map((t) => { const p = document.createElement("p"); p.textContent = t; return p; }));
  $("final").dataset.done = "true";
  $("final").dataset.states = run.states.length;
  $("status").textContent = `${run.states.length} states · ${d.sampler}, ${d.nfe} network calls`;
  $("generate").disabled = false;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  const body = requestBody();
  Object.assign(run, { states: [], done: null, shown: -1, queue: [], totalSteps: body.steps || 0 });
  $("samples").replaceChildren();
  $("final").replaceChildren();
  $("final").dataset.done = "false";
  $("scrub").disabled = true;
  $("steps-total").textContent = body.steps ?? "default";
  ["nfe", "tps", "secs"].forEach((id) => ($(id).textContent = "–"));
  $("run").hidden = false;
  $("generate").disabled = true;
  $("status").textContent = "generating…";
  try {
    const response = await fetch("/v1/generate/stream", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (!response.ok) {
      const err = await response.json().catch(() => ({ error: response.statusText }));
      const wait = response.headers.get("Retry-After");
      throw new Error(err.error + (wait ? ` (retry after ${wait} s)` : ""));
    }
    schedule(Math.max(5, Math.min(60, 3000 / Math.max(1, run.totalSteps))));
    await readEvents(response);
  } catch (err) {
    showError(String(err.message || err));
    $("status").textContent = "";
    $("generate").disabled = false;
    if (run.timer) { clearInterval(run.timer); run.timer = null; }
  }
}

async function readEvents(response) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (!data) continue;
      const payload = JSON.parse(data);
      if (kind === "state") {
        run.states.push(payload);
        run.queue.push(run.states.length - 1);
      } else if (kind === "done") {
        run.done = payload;
      } else if (kind === "error") {
        throw new Error(payload.error);
      }
    }
  }
  if (!run.done) throw new Error("the stream ended before the final text");
}

$("form").addEventListener("submit", generate);
$("scrub").addEventListener("input", (e) => render(parseInt(e.target.value, 10)));
loadModel();
