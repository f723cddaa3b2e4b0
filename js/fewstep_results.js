// FewStep results on the node: text a FewStep node sends with its output ("ui": {"text": [...]}, e.g.
// FewStep Error vs Exact's RMS error) is drawn under its widgets after each run. And widgets that do
// nothing in the node's current mode are greyed out (litegraph's widget.disabled), never silently
// ignored: FewStep Analytic Model's shift only acts in the flow family.
import { app } from "../../scripts/app.js";

const TEXT_H = 54; // tools/make_workflows.py reserves this (RESULT_HEIGHT) under FewStepExactError
const TEXT_NODES = new Set(["FewStepExactError", "FewStepReferenceModel", "FewStepQuality"]);

// widget -> predicate(node) telling whether it currently does something
const ACTIVE_WHEN = {
  FewStepAnalyticModel: { shift: (node) => widgetValue(node, "family") === "flow" },
};

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
  let y = node.size[1] - TEXT_H + 14;
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
        for (const name of ["family", ...Object.keys(ACTIVE_WHEN[nodeData.name])]) {
          const w = this.widgets?.find((x) => x.name === name);
          if (!w) continue;
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
        if (nodeData.name !== "FewStepExactError") {
          const min = this.computeSize();
          this.setSize([this.size[0], Math.max(this.size[1], min[1] + TEXT_H)]);
        }
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
