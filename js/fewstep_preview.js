// FewStep schedule preview: draws the sigma schedule (sigma against step, log scale) under the
// widgets of FewStep's scheduler nodes and redraws it whenever a widget (or the connected model)
// changes. The sigmas come from the pack's route GET /fewstep/sigmas, which runs the same Python
// schedule code as the node, so the curve is what the node will output.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREVIEW_H = 160; // tools/make_workflows.py reserves this (+10 margin) in generated workflows
const MARGIN = 10;
const DEBOUNCE_MS = 60;
const ROUTE = "/fewstep/sigmas";

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function value(node, name) {
  return widget(node, name)?.value;
}

function linkById(graph, id) {
  const links = graph?.links;
  if (!links || id == null) return null;
  return links instanceof Map ? links.get(id) : links[id];
}

// What the preview can know about the model feeding the node: FewStep's analytic model tells its
// family and shift; for any other model the preview falls back to SD1.5's sigmas and says so.
// Nodes that pass a MODEL through (patches, LoRAs, ...) keep its sigmas: the walk goes on upstream
// through their "model" input. ModelSamplingSD3 sets a flow grid with its shift.
function upstreamModel(node) {
  let input = node.inputs?.find((i) => i.name === "model");
  if (!input || input.link == null) return null;
  for (let hop = 0; hop < 16; hop++) {
    const link = linkById(node.graph, input.link);
    const src = link ? node.graph.getNodeById(link.origin_id) : null;
    if (!src) return null;
    if (src.type === "FewStepAnalyticModel" || src.type === "ModelSamplingSD3") return src;
    input = src.inputs?.find((i) => i.name === "model" && i.type === "MODEL");
    const out = src.outputs?.[link.origin_slot];
    if (!input || input.link == null || out?.type !== "MODEL") return { unknown: true };
  }
  return { unknown: true };
}

function modelParams(node) {
  const src = upstreamModel(node);
  if (!src) return { connected: false };
  if (src.type === "FewStepAnalyticModel") {
    const family = value(src, "family");
    const params = { family };
    if (family === "flow") params.shift = value(src, "shift");
    return { connected: true, known: true, params, label: `analytic ${family}` };
  }
  if (src.type === "ModelSamplingSD3") {
    const shift = value(src, "shift");
    return { connected: true, known: true, params: { family: "flow", shift }, label: `flow shift ${shift}` };
  }
  return { connected: true, known: false };
}

function queryFor(node) {
  const q = { steps: value(node, "steps"), denoise: value(node, "denoise") };
  let note = "";
  const model = modelParams(node);
  if (node.type === "FewStepAYSScheduler") {
    q.schedule = "ays";
    let mt = value(node, "model_type");
    const saved = value(node, "saved_schedule");
    if (saved && saved !== "none") q.saved_schedule = saved;
    if (mt === "auto") {
      mt = "SD1";
      note = "auto: SD1 shown";
    }
    q.model_type = mt;
    if (model.known) Object.assign(q, model.params);
    else if (model.connected) note = note || "table shown without remap";
    if (!note) note = saved && saved !== "none" ? saved : mt;
  } else {
    q.schedule = value(node, "schedule");
    q.rho = value(node, "rho");
    if (model.known) {
      Object.assign(q, model.params);
      note = model.label;
    } else {
      note = model.connected ? "SD1.5 sigmas assumed" : "no model: SD1.5 sigmas";
    }
  }
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null) params.set(k, String(v));
  return { url: `${ROUTE}?${params}`, note };
}

function state(node) {
  if (!node.fewstepPreview) {
    node.fewstepPreview = { url: null, note: "", sigmas: null, error: null, loading: false, fetches: 0, seq: 0 };
  }
  return node.fewstepPreview;
}

async function refresh(node, url, note) {
  const st = state(node);
  const seq = ++st.seq;
  st.loading = true;
  st.fetches += 1;
  let sigmas = null;
  let error = null;
  try {
    const res = await api.fetchApi(url);
    const body = await res.json().catch(() => null);
    if (res.ok && Array.isArray(body)) sigmas = body;
    else error = body?.error ?? `HTTP ${res.status}`;
  } catch (e) {
    error = String(e?.message ?? e);
  }
  if (seq !== st.seq) return; // a newer request is under way
  st.loading = false;
  st.sigmas = sigmas;
  st.error = error;
  st.note = note;
  st.updated = (st.updated ?? 0) + 1;
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

// Called on every draw: when the query changed (a widget, or the model upstream), fetch again.
function maybeRefresh(node) {
  const st = state(node);
  const { url, note } = queryFor(node);
  if (url === st.url) return;
  st.url = url;
  clearTimeout(st.timer);
  st.timer = setTimeout(() => refresh(node, url, note), DEBOUNCE_MS);
}

function niceLog(v) {
  if (v >= 100) return v.toFixed(0);
  if (v >= 1) return v.toFixed(2);
  return v.toPrecision(2);
}

function drawPreview(node, ctx) {
  const st = state(node);
  const w = node.size[0] - 2 * MARGIN;
  const h = PREVIEW_H - 2 * MARGIN;
  const x0 = MARGIN;
  const y0 = node.size[1] - PREVIEW_H + MARGIN;
  if (w < 40 || h < 40) return;
  ctx.save();
  ctx.fillStyle = "#15181d";
  ctx.strokeStyle = "#3a3f48";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.rect(x0, y0, w, h);
  ctx.fill();
  ctx.stroke();
  ctx.font = "10px sans-serif";
  ctx.textBaseline = "top";
  if (st.error) {
    ctx.fillStyle = "#ff7b72";
    wrapText(ctx, st.error, x0 + 6, y0 + 6, w - 12, 12);
    ctx.restore();
    return;
  }
  const s = st.sigmas;
  if (!s || s.length < 2) {
    ctx.fillStyle = "#8b949e";
    ctx.fillText(st.loading ? "computing schedule..." : st.hint ?? "no schedule", x0 + 6, y0 + 6);
    ctx.restore();
    return;
  }
  const pos = s.filter((v) => v > 0);
  const lmax = Math.log10(Math.max(...pos));
  let lmin = Math.log10(Math.min(...pos));
  if (lmax - lmin < 1e-6) lmin = lmax - 1;
  const padT = 18;
  const padB = 14;
  const padL = 34;
  const px = (i) => x0 + padL + (i / (s.length - 1)) * (w - padL - 8);
  const py = (v) => y0 + padT + ((lmax - Math.log10(v)) / (lmax - lmin)) * (h - padT - padB);
  // decade grid
  ctx.strokeStyle = "#262b33";
  ctx.fillStyle = "#6e7681";
  ctx.textBaseline = "middle";
  for (let d = Math.ceil(lmin); d <= Math.floor(lmax); d++) {
    const y = py(10 ** d);
    ctx.beginPath();
    ctx.moveTo(x0 + padL, y);
    ctx.lineTo(x0 + w - 8, y);
    ctx.stroke();
    ctx.fillText(`1e${d}`, x0 + 4, y);
  }
  // the schedule: positive sigmas on the log axis, the final 0 as a drop to the bottom edge
  ctx.strokeStyle = "#58a6ff";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  for (let i = 0; i < s.length; i++) {
    if (s[i] <= 0) break;
    if (i === 0) ctx.moveTo(px(i), py(s[i]));
    else ctx.lineTo(px(i), py(s[i]));
  }
  ctx.stroke();
  const last = s.length - 1;
  if (s[last] === 0 && last > 0 && s[last - 1] > 0) {
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(px(last - 1), py(s[last - 1]));
    ctx.lineTo(px(last), y0 + h - 2);
    ctx.stroke();
    ctx.setLineDash([]);
  }
  if (s.length <= 80) {
    ctx.fillStyle = "#c9d1d9";
    for (let i = 0; i < s.length && s[i] > 0; i++) {
      ctx.beginPath();
      ctx.arc(px(i), py(s[i]), 2, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  ctx.fillStyle = "#8b949e";
  ctx.textBaseline = "top";
  ctx.fillText(`σ ${niceLog(pos[0])} → ${niceLog(pos[pos.length - 1])} → 0`, x0 + padL, y0 + 3);
  ctx.textAlign = "right";
  ctx.fillText(`${s.length - 1} steps · ${st.note}`, x0 + w - 6, y0 + 3);
  ctx.textAlign = "left";
  ctx.textBaseline = "bottom";
  ctx.fillText("step →", x0 + padL, y0 + h - 1);
  ctx.restore();
}

function wrapText(ctx, text, x, y, maxW, lineH) {
  const words = String(text).split(/\s+/);
  let line = "";
  for (const word of words) {
    const test = line ? `${line} ${word}` : word;
    if (ctx.measureText(test).width > maxW && line) {
      ctx.fillText(line, x, y);
      y += lineH;
      line = word;
    } else line = test;
  }
  if (line) ctx.fillText(line, x, y);
}

// FewStepAYSOptimize has no schedule before it runs: it draws the one it computed, which the node
// sends with its output ("ui": {"fewstep_sigmas": [...]}), and says so until then.
function setupOptimizeNode(nodeType) {
  addPreview(nodeType, false);
  const onNodeCreated = nodeType.prototype.onNodeCreated;
  nodeType.prototype.onNodeCreated = function () {
    const r = onNodeCreated?.apply(this, arguments);
    const st = state(this);
    st.note = "optimised";
    st.hint = "queue the graph: the optimised schedule shows here";
    fitToPreview(this);
    return r;
  };
  const onExecuted = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (message) {
    const r = onExecuted?.apply(this, arguments);
    const s = message?.fewstep_sigmas;
    if (Array.isArray(s)) {
      const st = state(this);
      st.sigmas = s.map(Number);
      st.error = null;
      st.note = "optimised";
      st.updated = (st.updated ?? 0) + 1;
      this.setDirtyCanvas?.(true, true);
    }
    return r;
  };
}

// What both preview kinds share: room for the plot under the widgets, and the plot drawn on the
// node (``refresh``: first recompute the schedule if the widgets changed).
function addPreview(nodeType, refresh) {
  const computeSize = nodeType.prototype.computeSize;
  nodeType.prototype.computeSize = function (out) {
    const size = computeSize.apply(this, arguments);
    size[1] += PREVIEW_H;
    size[0] = Math.max(size[0], 260);
    return size;
  };
  const onDrawForeground = nodeType.prototype.onDrawForeground;
  nodeType.prototype.onDrawForeground = function (ctx) {
    const r = onDrawForeground?.apply(this, arguments);
    if (this.flags?.collapsed) return r;
    if (refresh) maybeRefresh(this);
    drawPreview(this, ctx);
    return r;
  };
}

function fitToPreview(node) {
  const min = node.computeSize();
  node.setSize([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
}

app.registerExtension({
  name: "FewStep.SchedulePreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "FewStepAYSOptimize") return setupOptimizeNode(nodeType);
    if (nodeData.name !== "FewStepAYSScheduler" && nodeData.name !== "FewStepScheduler") return;
    addPreview(nodeType, true);

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      state(this);
      for (const w of this.widgets ?? []) {
        const cb = w.callback;
        const node = this;
        w.callback = function () {
          const out = cb?.apply(this, arguments);
          maybeRefresh(node);
          node.setDirtyCanvas?.(true, true);
          return out;
        };
      }
      fitToPreview(this);
      return r;
    };
  },
});
