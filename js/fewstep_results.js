// FewStep results on the node: text a FewStep node sends with its output ("ui": {"text": [...]}, e.g.
// FewStep Error vs Exact's RMS error) is drawn under its widgets after each run. And widgets that do
// nothing in the node's current mode are greyed out (litegraph's widget.disabled), never silently
// ignored (ACTIVE_WHEN below: e.g. FewStep Analytic Model's shift only acts in the flow family).
import { app } from "../../scripts/app.js";

// the room under the widgets for the text a node sends: tools/make_workflows.py reserves the same
// (RESULT_HEIGHT) in the example workflows
const TEXT_HEIGHT = { FewStepExactError: 54, FewStepOLSSTrain: 110, FewStepReferenceModel: 70, FewStepQuality: 70 };
const TEXT_NODES = new Set(Object.keys(TEXT_HEIGHT));

// node type -> widget -> predicate(node) telling whether the widget currently does something; a
// widget whose predicate is false is greyed out (never silently ignored). Node ids and widget order
// are untouched: this only sets litegraph's widget.disabled. The predicates read other widgets' values
// (and, for FewStep OLSS Sampler, whether the profile input is linked); the tooltips say the same.
const value = (name) => (node) => widgetValue(node, name);
const isIn = (name, values) => (node) => values.includes(widgetValue(node, name));
const SDE = ["sde_2m", "sde_3m"];
export const ACTIVE_WHEN = {
  FewStepAnalyticModel: { shift: (node) => widgetValue(node, "family") === "flow" },
  FewStepDDIM: { s_noise: (node) => Number(value("eta")(node)) > 0 },
  FewStepDPMSolverPP: {
    eta: isIn("mode", SDE),
    s_noise: isIn("mode", SDE),
    noise_type: isIn("mode", SDE),
    lower_order_final: isIn("mode", ["2m", "3m", ...SDE]),
  },
  FewStepUniPC: { lower_order_final: (node) => Number(value("order")(node)) > 1 },
  FewStepEDM: {
    s_tmin: (node) => Number(value("s_churn")(node)) > 0,
    s_tmax: (node) => Number(value("s_churn")(node)) > 0,
    s_noise: (node) => Number(value("s_churn")(node)) > 0,
  },
  FewStepScheduler: { rho: isIn("schedule", ["karras", "polyexponential"]) },
  FewStepAYSScheduler: {
    model_type: (node) => [undefined, "(none)", "none"].includes(widgetValue(node, "saved_schedule"))
      || String(widgetValue(node, "saved_schedule")).startsWith("("),
  },
  FewStepFreeU: {
    b1: isIn("preset", ["custom"]),
    b2: isIn("preset", ["custom"]),
    s1: isIn("preset", ["custom"]),
    s2: isIn("preset", ["custom"]),
  },
  FewStepDeepCache: {
    center: isIn("mode", ["non-uniform"]),
    power: isIn("mode", ["non-uniform"]),
  },
  FewStepOLSSTrain: { heldout_runs: (node) => widgetValue(node, "select_on_heldout") !== false },
  FewStepOLSSSampler: {
    profile_name: (node) => {
      const input = node.inputs?.find((i) => i.name === "profile");
      return input?.link == null;
    },
  },
};
// for the browser test: which widgets each rule covers
window.fewstepWidgetRules = Object.fromEntries(
  Object.entries(ACTIVE_WHEN).map(([k, v]) => [k, Object.keys(v)]));

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function updateDisabled(node) {
  const rules = ACTIVE_WHEN[node.type];
  if (!rules) return;
  for (const [name, active] of Object.entries(rules)) {
    const w = node.widgets?.find((x) => x.name === name);
    if (w) w.disabled = !active(node);
  }
  node.setDirtyCanvas?.(true, true);
}

function drawText(node, ctx) {
  const lines = node.fewstepText;
  if (!lines?.length || node.flags?.collapsed) return;
  ctx.save();
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#9fd39f";
  const maxW = node.size[0] - 20;
  let y = node.size[1] - (TEXT_HEIGHT[node.type] ?? 54) + 14;
  for (const text of lines) {
    let line = "";
    for (const word of String(text).split(/\s+/)) {
      const test = line ? `${line} ${word}` : word;
      if (ctx.measureText(test).width > maxW && line) {
        ctx.fillText(line, 10, y);
        y += 15;
        line = word;
      } else line = test;
    }
    if (line) ctx.fillText(line, 10, y);
    y += 15;
  }
  ctx.restore();
}

app.registerExtension({
  name: "FewStep.Results",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (ACTIVE_WHEN[nodeData.name]) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        const node = this;
        for (const w of this.widgets ?? []) {   // any widget may switch a rule
          const cb = w.callback;
          w.callback = function () {
            const out = cb?.apply(this, arguments);
            updateDisabled(node);
            return out;
          };
        }
        updateDisabled(this);
        return r;
      };
      const onConnectionsChange = nodeType.prototype.onConnectionsChange;
      nodeType.prototype.onConnectionsChange = function () {
        const r = onConnectionsChange?.apply(this, arguments);
        updateDisabled(this);
        return r;
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const r = onConfigure?.apply(this, arguments);
        updateDisabled(this);
        return r;
      };
    }
    if (!TEXT_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      if (Array.isArray(message?.text)) {
        this.fewstepText = message.text.map(String);
        const min = this.computeSize();   // keep the room for the text (a node resized smaller)
        this.setSize([this.size[0], Math.max(this.size[1], min[1] + TEXT_HEIGHT[nodeData.name])]);
        this.setDirtyCanvas?.(true, true);
      }
      return r;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const r = onDrawForeground?.apply(this, arguments);
      drawText(this, ctx);
      return r;
    };
  },
});
