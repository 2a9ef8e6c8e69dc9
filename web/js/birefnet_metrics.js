// The metrics table of BiRefNetEvaluate, shown inside the node after it runs (the node sends
// `birefnet_metrics`: one text table, nodes/evaluate.py), as HTML (a DOM widget) so that it shows
// in the classic canvas and in "Nodes 2.0" alike. State: `node.birefnetMetrics`, the table's
// lines. A helper of birefnet.js; registers nothing by itself.

import { DOM_MARGIN, addElementWidget, element, refitNode } from "./birefnet_widget.js";

export const METRICS_WIDGET = "birefnet_metrics";
const LINE = 15;
const PADDING = 4;
const MIN_WIDTH = 420;
const MAX_WIDTH = 1200;
const FONT = "12px monospace";
let measure = null;

/** The node width that shows the widest line of the table unclipped (at most MAX_WIDTH). */
function tableWidth(lines, minWidth = MIN_WIDTH) {
	measure ??= document.createElement("canvas").getContext("2d");
	measure.font = FONT;
	const widest = Math.max(0, ...lines.map((line) => measure.measureText(line).width));
	return Math.min(MAX_WIDTH, Math.max(minWidth, Math.ceil(widest) + 12 + 2 * DOM_MARGIN + 4));
}

function tableHeight(node) {
	return LINE * (node.birefnetMetrics?.length ?? 0) + 2 * PADDING + 2 * DOM_MARGIN;
}

function tableElement() {
	return element("pre", "birefnet-metrics", {
		boxSizing: "border-box", width: "100%", height: "100%", margin: "0",
		padding: `${PADDING}px 6px`, background: "#1e1e1e", color: "#ddd",
		font: FONT, lineHeight: `${LINE}px`, overflow: "auto", whiteSpace: "pre",
		userSelect: "text",
	});
}

/** Show a `birefnet_metrics` message (a list holding one text table) on the node, widening
 * it to at least `minWidth` (the Evaluate table's width by default). */
export function showMetrics(node, message, minWidth = MIN_WIDTH) {
	const text = Array.isArray(message) ? message.join("\n") : "";
	if (!text) return;
	node.birefnetMetrics = text.split("\n");
	let widget = node.widgets?.find((w) => w.name === METRICS_WIDGET);
	if (!widget) {
		widget = addElementWidget(node, METRICS_WIDGET, tableElement(), () => tableHeight(node));
	}
	widget.content.textContent = text;
	const width = tableWidth(node.birefnetMetrics, minWidth);
	if (node.size && node.size[0] < width) node.setSize?.([width, node.size[1]]);
	refitNode(node, widget, () => tableHeight(node));
}
