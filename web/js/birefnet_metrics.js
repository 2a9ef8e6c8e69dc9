// The metrics table of BiRefNetEvaluate, drawn inside the node after it runs (the node sends
// `birefnet_metrics`: one text table, nodes/evaluate.py). State: `node.birefnetMetrics`, the
// table's lines. A helper of birefnet.js; registers nothing by itself.

import { drawnWidget } from "./birefnet_widget.js";

export const METRICS_WIDGET = "birefnet_metrics";
const LINE = 15;

function metricsWidget(node) {
	return drawnWidget(METRICS_WIDGET, {
		draw(ctx, _node, width, y, _height, lowQuality) {
			const lines = node.birefnetMetrics ?? [];
			if (lowQuality || !lines.length) return;
			ctx.save();
			ctx.fillStyle = "#1e1e1e";
			ctx.fillRect(10, y, width - 20, LINE * lines.length + 8);
			ctx.font = "12px monospace";
			ctx.textBaseline = "top";
			ctx.fillStyle = "#ddd";
			lines.forEach((line, i) => ctx.fillText(line, 16, y + 4 + LINE * i, width - 32));
			ctx.restore();
		},
		computeSize(width) {
			return [width ?? node.size[0], LINE * (node.birefnetMetrics?.length ?? 0) + 12];
		},
	});
}

/** Show a `birefnet_metrics` message (a list holding one text table) on the node. */
export function showMetrics(node, message) {
	const text = Array.isArray(message) ? message.join("\n") : "";
	if (!text) return;
	node.birefnetMetrics = text.split("\n");
	if (!node.widgets?.some((w) => w.name === METRICS_WIDGET)) {
		node.addCustomWidget(metricsWidget(node));
	}
	const needed = node.computeSize?.();
	if (needed) node.setSize([Math.max(node.size[0], 420), Math.max(node.size[1], needed[1])]);
	node.setDirtyCanvas?.(true, true);
}
