// The pack's ComfyUI frontend extension, for the 2024 frontend and the current one alike.
//
// - BiRefNetSegment, BiRefNetRefineEdges and BiRefNetVideoMatte: a before/after preview of the
//   cutout inside the node (birefnet_preview.js), state in `node.birefnetPreview`.
// - BiRefNetEvaluate: its metrics table inside the node (birefnet_metrics.js).
// - BiRefNetLoader: whether the chosen model is on disk or will be downloaded on first run (and
//   from where, to where), from GET /birefnet/models; state in `node.birefnetModelStatus`.
// All three are DOM widgets (birefnet_widget.js), shown in the classic canvas and in "Nodes 2.0"
// (the current frontend's Vue renderer) alike.
//
// This file is served as /extensions/<pack>/js/birefnet.js (WEB_DIRECTORY is ./web), so
// ComfyUI's scripts are three folders up.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { METRICS_WIDGET, showMetrics } from "./birefnet_metrics.js";
import { PREVIEW_WIDGET, showPreview } from "./birefnet_preview.js";
import { DOM_MARGIN, addElementWidget, element, refitNode } from "./birefnet_widget.js";

const PREVIEW_NODES = new Set([
	"BiRefNetSegment", "BiRefNetRefineEdges", "BiRefNetVideoMatte", "BiRefNetDetail",
]);
const LOADER = "BiRefNetLoader";
const EVALUATE = "BiRefNetEvaluate";
const SAVE_MATTE = "BiRefNetSaveMatte";   // its two-line summary shows like Evaluate's table
// Save Matte's width from the start: its summary ("prores_4444: 300 frames, 1920x1080, 10-bit"
// and the path) fits without the node growing over its neighbours once it has run.
const SAVE_MATTE_WIDTH = 340;
const STATUS_WIDGET = "birefnet_model_status";
const LINE = 16;
const OWN_WIDGETS = new Set([PREVIEW_WIDGET, STATUS_WIDGET, METRICS_WIDGET]);
const COLORS = { "on disk": "#4caf50", download: "#ffb300", missing: "#e53935", unknown: "#888" };

// -- GET /birefnet/models ---------------------------------------------------------------------
const models = { byName: new Map(), available: false, request: null, warned: false };

/** Fetch the model list (one request at a time; force: ask again even if one is known). */
function fetchModels(force = false) {
	if (models.request && !force) return models.request;
	const request = (async () => {
		try {
			const response = await api.fetchApi("/birefnet/models", { cache: "no-store" });
			if (!response.ok) throw new Error(`HTTP ${response.status}`);
			const body = await response.json();
			models.byName = new Map((body.models ?? []).map((entry) => [entry.name, entry]));
			models.available = true;
		} catch (error) {
			models.available = false;
			if (!models.warned) {
				models.warned = true;
				console.warn(`BiRefNet: model status unavailable (/birefnet/models: ${error.message})`);
			}
		}
		for (const node of loaderNodes()) updateStatus(node);
		return models;
	})();
	models.request = request;
	return request;
}

function allNodes(graph, seen = new Set()) {
	if (!graph || seen.has(graph)) return [];
	seen.add(graph);
	const nodes = [...(graph._nodes ?? graph.nodes ?? [])];
	for (const node of [...nodes]) {
		if (node.subgraph) nodes.push(...allNodes(node.subgraph, seen));
	}
	return nodes;
}

function loaderNodes() {
	return allNodes(app.graph).filter((node) => node.comfyClass === LOADER || node.type === LOADER);
}

// -- the Loader's status line -----------------------------------------------------------------
/** {name, state, label, detail, lines, entry} for a model choice: lines are what the widget
 * shows under the label. */
function describe(name) {
	const status = (state, label, lines = [], entry = undefined) =>
		({ name, state, label, detail: lines.join(" "), lines, entry });
	if (!models.available) return status("unknown", "model status unavailable");
	const entry = models.byName.get(name);
	if (!entry) return status("unknown", "not in the model list (refresh?)");
	if (entry.present) return status("on disk", "on disk", [entry.path ?? ""], entry);
	const download = entry.download;
	if (!download) return status("missing", "missing: not on disk, no download known", [], entry);
	const gated = download.gated ? " (gated: needs a Hugging Face token)" : "";
	return status("download", `download on first run${gated}`,
		[`from ${download.repo}/${download.file}`, `to ${download.to}`], entry);
}

function modelWidget(node) {
	return node.widgets?.find((w) => w.name === "model");
}

function statusHeight(node) {
	return 22 + LINE * (node.birefnetModelStatus?.lines.length ?? 0) + 2 * DOM_MARGIN;
}

function updateStatus(node) {
	const widget = modelWidget(node);
	if (!widget) return;
	node.birefnetModelStatus = describe(widget.value);
	const view = node.birefnetStatusView;
	if (!view) return;
	renderStatus(node, view);
	if (view.widget) refitNode(node, view.widget, () => statusHeight(node));
}

let measure = null;

/** text cut to width px: the start elided (paths matter at their end), a "from "/"to " kept. */
function fitText(text, width, font) {
	measure ??= document.createElement("canvas").getContext("2d");
	measure.font = font;
	if (width <= 0 || measure.measureText(text).width <= width) return text;
	const head = /^(from|to) /.exec(text)?.[0] ?? "";
	const tail = text.slice(head.length);
	let keep = tail.length;
	while (keep > 1 && measure.measureText(`${head}…${tail.slice(tail.length - keep)}`).width > width) {
		keep--;
	}
	return `${head}…${tail.slice(tail.length - keep)}`;
}

const LABEL_FONT = "12px Arial, sans-serif";
const LINE_FONT = "11px Arial, sans-serif";

/** The status line's elements: a coloured dot and the label, then the detail lines. */
function statusView(node) {
	const root = element("div", "birefnet-model-status", {
		boxSizing: "border-box", width: "100%", height: "100%", overflow: "hidden",
		padding: "0 4px", userSelect: "none",
	});
	const head = element("div", "", { display: "flex", alignItems: "center", gap: "7px",
		height: "20px" });
	const dot = element("span", "birefnet-model-status-dot", { width: "10px", height: "10px",
		borderRadius: "50%", flex: "none" });
	const label = element("span", "birefnet-model-status-label", { font: LABEL_FONT,
		whiteSpace: "nowrap", overflow: "hidden" });
	head.append(dot, label);
	const lines = element("div", "birefnet-model-status-lines", { font: LINE_FONT,
		color: "#999", lineHeight: `${LINE}px`, whiteSpace: "nowrap" });
	root.append(head, lines);
	const view = { root, dot, label, lines };
	new ResizeObserver(() => renderStatus(node, view)).observe(root);
	return view;
}

function renderStatus(node, view) {
	const status = node.birefnetModelStatus;
	if (!status) return;
	const color = COLORS[status.state] ?? COLORS.unknown;
	const width = view.root.clientWidth - 8;
	view.root.dataset.state = status.state;
	view.root.title = [status.label, ...status.lines].join("\n");
	view.dot.style.background = color;
	view.label.style.color = color;
	view.label.textContent = fitText(status.label, width - 17, LABEL_FONT);
	view.lines.replaceChildren(...status.lines.map((line) => {
		const row = element("div");
		row.textContent = fitText(line, width, LINE_FONT);
		return row;
	}));
}

/** Call changed() after each write to widget.value, keeping how the frontend stores it (a
 * plain field in the 2024 frontend, an accessor of the widget's class in the current one). */
function watchValue(widget, changed) {
	let owner = widget;
	let descriptor;
	while (owner && !(descriptor = Object.getOwnPropertyDescriptor(owner, "value"))) {
		owner = Object.getPrototypeOf(owner);
	}
	if (owner === widget && descriptor && !descriptor.configurable) return;
	let stored = widget.value;
	const read = descriptor?.get ? () => descriptor.get.call(widget) : () => stored;
	const write = descriptor?.set ? (value) => descriptor.set.call(widget, value)
		: (value) => { stored = value; };
	Object.defineProperty(widget, "value", {
		configurable: true,
		enumerable: descriptor?.enumerable ?? true,
		get: read,
		set(value) {
			write(value);
			changed();
		},
	});
}

function setUpLoader(node) {
	const widget = modelWidget(node);
	if (!widget || node.widgets.some((w) => w.name === STATUS_WIDGET)) return;
	const callback = widget.callback;
	widget.callback = function (...args) {
		const result = callback?.apply(this, args);
		updateStatus(node);
		fetchModels(true);          // a new file may have appeared since the last look
		return result;
	};
	// A loaded workflow or a script sets the combo's value without its callback.
	const follow = () => {
		if (node.birefnetModelStatus?.name !== modelWidget(node)?.value) updateStatus(node);
	};
	watchValue(widget, follow);
	const onConfigure = node.onConfigure;
	node.onConfigure = function (...args) {
		const result = onConfigure?.apply(this, args);
		updateStatus(node);
		return result;
	};
	node.birefnetModelStatus = describe(widget.value);
	const view = statusView(node);
	node.birefnetStatusView = view;
	view.widget = addElementWidget(node, STATUS_WIDGET, view.root, () => statusHeight(node),
		{ onDraw: follow });
	updateStatus(node);
	fetchModels();
}

// -- registration -----------------------------------------------------------------------------
/** Keep the pack's widgets out of a saved workflow's widgets_values. The current frontend
 * skips widgets marked serialize: false by itself; the 2024 one lists every widget's value, so
 * there (and only when the list has one value per widget) ours are taken out. */
function dropOwnValues(node, data) {
	const values = data?.widgets_values;
	if (!Array.isArray(values) || !node.widgets || values.length !== node.widgets.length) return;
	for (let i = node.widgets.length - 1; i >= 0; i--) {
		if (OWN_WIDGETS.has(node.widgets[i]?.name)) values.splice(i, 1);
	}
}

app.registerExtension({
	name: "birefnet.kit",
	async setup() {
		fetchModels();
	},
	async beforeRegisterNodeDef(nodeType, nodeData) {
		const shows = PREVIEW_NODES.has(nodeData.name) || nodeData.name === EVALUATE
			|| nodeData.name === SAVE_MATTE;
		if (!shows && nodeData.name !== LOADER) return;
		const onSerialize = nodeType.prototype.onSerialize;
		nodeType.prototype.onSerialize = function (data) {
			const result = onSerialize?.apply(this, arguments);
			dropOwnValues(this, data);
			return result;
		};
		if (shows) {
			const onExecuted = nodeType.prototype.onExecuted;
			nodeType.prototype.onExecuted = function (output) {
				const result = onExecuted?.apply(this, arguments);
				try {
					if (output?.birefnet_preview) showPreview(this, output.birefnet_preview, api);
					if (output?.birefnet_metrics) {
						showMetrics(this, output.birefnet_metrics,
							nodeData.name === SAVE_MATTE ? SAVE_MATTE_WIDTH : undefined);
					}
				} catch (error) {
					console.warn("BiRefNet:", error);
				}
				return result;
			};
		}
	},
	async nodeCreated(node) {
		if (node.comfyClass === LOADER) setUpLoader(node);
		if (node.comfyClass === SAVE_MATTE && node.size?.[0] < SAVE_MATTE_WIDTH) {
			node.setSize?.([SAVE_MATTE_WIDTH, node.size[1]]);
		}
	},
	async refreshComboInNodes() {
		await fetchModels(true);
	},
});
