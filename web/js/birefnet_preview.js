// Before/after preview of a BiRefNet cutout inside the node, as HTML (a DOM widget), so that it
// shows in the classic canvas and in "Nodes 2.0" alike.
//
// The nodes send `birefnet_preview` (nodes/preview.py): up to four frames of the batch, each a
// source PNG ("before") and an RGBA cutout PNG ("after") in ComfyUI's temp folder. This module
// only shows them; the node's outputs are never touched. It is a helper of birefnet.js and
// registers nothing by itself.
//
// State lives on the node as `node.birefnetPreview`:
//   entries: [{index, count, before: Image, after: Image, ready: {before, after}, failed}]
//   current: which entry is shown; split: 0..1, the share of the width showing "before";
//   dragging: whether the split is being dragged; frameLabel: "frame i of B" for a batch;
//   view: the widget's elements (root, picture, prev, next, label, ...).

import { DOM_MARGIN, addElementWidget, element, refitNode } from "./birefnet_widget.js";

export const PREVIEW_WIDGET = "birefnet_preview";

const HEADER = 22;
const MIN_AREA = 64;
const MAX_AREA = 384;
const MIN_WIDTH = 280;
const CHECKER = 8;
const LIGHT = "#f2f2f2";
const DARK = "#c4c4c4";

/** The /view URL of an image reference {filename, subfolder, type}. */
function viewURL(api, ref) {
	const params = new URLSearchParams({
		filename: ref.filename,
		subfolder: ref.subfolder ?? "",
		type: ref.type ?? "temp",
	});
	return api.apiURL(`/view?${params}`);
}

function loadImage(api, ref, entry, which, node) {
	const image = new Image();
	image.draggable = false;
	image.alt = which === "before" ? "source" : "cutout";
	image.onload = () => {
		entry.ready[which] = true;
		update(node);
	};
	image.onerror = () => {
		entry.failed = true;
		console.warn(`BiRefNet preview: could not load ${ref.filename}`);
		update(node);
	};
	image.src = viewURL(api, ref);
	return image;
}

/** Show the frames of one `birefnet_preview` message on the node (called from onExecuted). */
export function showPreview(node, message, api) {
	if (!Array.isArray(message) || message.length === 0) return;
	const state = node.birefnetPreview ?? { split: 0.5, current: 0, dragging: false };
	const entries = message
		.filter((item) => item?.before?.filename && item?.after?.filename)
		.map((item) => ({ index: item.index ?? 0, count: item.count ?? 1,
			ready: { before: false, after: false }, failed: false }));
	if (!entries.length) return;
	state.entries = entries;
	state.current = Math.min(state.current, entries.length - 1);
	state.dragging = false;
	node.birefnetPreview = state;
	if (!node.widgets?.some((w) => w.name === PREVIEW_WIDGET)) {
		state.view = buildView(node);
		state.view.widget = addElementWidget(node, PREVIEW_WIDGET, state.view.root,
			() => widgetHeight(node));
	}
	const items = message.filter((item) => item?.before?.filename && item?.after?.filename);
	entries.forEach((entry, i) => {
		entry.before = loadImage(api, items[i].before, entry, "before", node);
		entry.after = loadImage(api, items[i].after, entry, "after", node);
	});
	update(node);
}

/** Step the shown frame by delta (wraps around). */
export function stepFrame(node, delta) {
	const state = node.birefnetPreview;
	if (!state?.entries?.length) return;
	const n = state.entries.length;
	state.current = (((state.current + delta) % n) + n) % n;
	update(node);
}

/** Height/width of the shown frame (1 until its image has loaded). */
function aspect(state) {
	const image = state?.entries?.[state.current]?.before;
	if (image && image.naturalWidth > 0 && image.naturalHeight > 0) {
		return image.naturalHeight / image.naturalWidth;
	}
	return 1;
}

/** The widget's height in canvas units: header, picture area at the node's width, margins. */
function widgetHeight(node) {
	const width = Math.max(1, (node.size?.[0] ?? MIN_WIDTH) - 2 * DOM_MARGIN);
	const area = Math.min(MAX_AREA, Math.max(MIN_AREA, width * aspect(node.birefnetPreview)));
	return Math.round(HEADER + area) + 2 * DOM_MARGIN;
}

function checkerURL() {
	const tile = document.createElement("canvas");
	tile.width = tile.height = 2 * CHECKER;
	const t = tile.getContext("2d");
	t.fillStyle = LIGHT;
	t.fillRect(0, 0, 2 * CHECKER, 2 * CHECKER);
	t.fillStyle = DARK;
	t.fillRect(0, 0, CHECKER, CHECKER);
	t.fillRect(CHECKER, CHECKER, CHECKER, CHECKER);
	return tile.toDataURL("image/png");
}

function arrowButton(direction, title) {
	const button = element("button", "birefnet-preview-arrow", {
		width: "20px", height: "16px", padding: "0", border: "none", borderRadius: "4px",
		background: "#3a3a3a", color: "#ddd", fontSize: "9px", lineHeight: "16px",
		cursor: "pointer", flex: "none",
	});
	button.type = "button";
	button.title = title;
	button.textContent = direction < 0 ? "\u25C0" : "\u25B6";
	return button;
}

/** The widget's elements: a header (caption, frame label, arrows) over the picture. */
function buildView(node) {
	const root = element("div", "birefnet-preview", {
		display: "flex", flexDirection: "column", boxSizing: "border-box", width: "100%",
		height: "100%", overflow: "hidden", font: "12px Arial, sans-serif", userSelect: "none",
	});
	const header = element("div", "birefnet-preview-header", {
		display: "flex", alignItems: "center", gap: "6px", height: `${HEADER}px`, flex: "none",
	});
	const caption = element("span", "", { color: "#aaa", flex: "1", whiteSpace: "nowrap" });
	caption.textContent = "before | cutout";
	const prev = arrowButton(-1, "previous frame");
	const label = element("span", "birefnet-preview-label", { color: "#ddd", whiteSpace: "nowrap" });
	const next = arrowButton(1, "next frame");
	header.append(caption, prev, label, next);
	const stage = element("div", "birefnet-preview-stage", {
		position: "relative", flex: "1", minHeight: `${MIN_AREA}px`,
	});
	const picture = element("div", "birefnet-preview-picture", {
		position: "absolute", overflow: "hidden", cursor: "ew-resize", touchAction: "none",
		backgroundImage: `url(${checkerURL()})`, backgroundRepeat: "repeat",
		backgroundPosition: "0 0", backgroundSize: `${2 * CHECKER}px ${2 * CHECKER}px`,
		imageRendering: "auto",
	});
	const line = element("div", "birefnet-preview-split", {
		position: "absolute", top: "0", bottom: "0", width: "2px", marginLeft: "-1px",
		background: "#ffffff", pointerEvents: "none",
	});
	const handle = element("div", "birefnet-preview-handle", {
		position: "absolute", top: "50%", width: "12px", height: "12px", margin: "-7px 0 0 -7px",
		borderRadius: "50%", background: "#1e88e5", border: "1px solid #ffffff",
		pointerEvents: "none",
	});
	const failed = element("div", "birefnet-preview-failed", {
		position: "absolute", top: "4px", left: "0", right: "0", textAlign: "center",
		color: "#e53935", pointerEvents: "none",
	});
	picture.append(line, handle, failed);
	stage.append(picture);
	root.append(header, stage);
	const view = { root, header, label, prev, next, stage, picture, line, handle, failed,
		shown: [] };
	listen(node, view);
	new ResizeObserver(() => layout(node)).observe(stage);
	return view;
}

function imageStyle(image) {
	Object.assign(image.style, {
		position: "absolute", left: "0", top: "0", width: "100%", height: "100%",
		pointerEvents: "none", display: "block",
	});
	return image;
}

/** Put the shown frame's pictures, label, split and size in place. */
function update(node) {
	const state = node.birefnetPreview;
	const view = state?.view;
	const entry = state?.entries?.[state.current];
	if (!view || !entry) return;
	const batch = entry.count > 1;
	state.frameLabel = batch ? `frame ${entry.index + 1} of ${entry.count}` : null;
	view.label.textContent = state.frameLabel ?? "";
	const arrows = batch && state.entries.length > 1;
	view.prev.style.display = view.next.style.display = arrows ? "" : "none";
	const shown = [entry.after, entry.before].filter((image, i) =>
		entry.ready[i ? "before" : "after"]);
	if (shown.length !== view.shown.length || shown.some((image, i) => image !== view.shown[i])) {
		view.picture.querySelectorAll("img").forEach((image) => image.remove());
		view.picture.prepend(...shown.map(imageStyle));
		view.shown = shown;
	}
	view.failed.textContent = entry.failed ? "preview unavailable" : "";
	placeSplit(state);
	fitNode(node);
	layout(node);
}

/** Clip the pictures at the split: the source left of it, the cutout right of it. */
function placeSplit(state) {
	const view = state.view;
	const entry = state.entries[state.current];
	const percent = `${(state.split * 100).toFixed(3)}%`;
	entry.before.style.clipPath = `inset(0 calc(100% - ${percent}) 0 0)`;
	entry.after.style.clipPath = `inset(0 0 0 ${percent})`;
	view.line.style.left = view.handle.style.left = percent;
}

/** Fit the picture (the frame's aspect) centred in the stage. */
function layout(node) {
	const state = node.birefnetPreview;
	const view = state?.view;
	if (!view) return;
	const areaW = view.stage.clientWidth;
	const areaH = view.stage.clientHeight;
	if (!areaW || !areaH) return;
	const ratio = aspect(state);
	let w = areaW;
	let h = areaW * ratio;
	if (h > areaH) {
		h = areaH;
		w = areaH / ratio;
	}
	Object.assign(view.picture.style, { left: `${(areaW - w) / 2}px`,
		top: `${(areaH - h) / 2}px`, width: `${w}px`, height: `${h}px` });
}

/** Widen the node to a usable width and fit its height to the preview: grow it when it is too
 * short, shrink it back when its height is still the one set here (not the user's). */
function fitNode(node) {
	const state = node.birefnetPreview;
	if (!node.size || !state?.view) return;
	if (node.size[0] < MIN_WIDTH) node.setSize?.([MIN_WIDTH, node.size[1]]);
	const ours = Math.abs(node.size[1] - (state.fittedHeight ?? -1)) < 0.5;
	const height = refitNode(node, state.view.widget, () => widgetHeight(node), ours);
	if (height != null) state.fittedHeight = height;
}

function setSplit(node, clientX) {
	const state = node.birefnetPreview;
	const box = state.view.picture.getBoundingClientRect();
	if (box.width <= 0) return;
	state.split = Math.min(1, Math.max(0, (clientX - box.left) / box.width));
	placeSplit(state);
}

/** Drag the split with the pointer; step frames with the arrows. The events stay with the
 * preview (the canvas must not drag the node meanwhile). */
function listen(node, view) {
	const own = (event) => {
		event.stopPropagation();
		event.preventDefault();
	};
	view.picture.addEventListener("pointerdown", (event) => {
		const state = node.birefnetPreview;
		if (event.button !== 0 || !state?.entries?.length) return;
		own(event);
		state.dragging = true;
		view.picture.setPointerCapture?.(event.pointerId);
		setSplit(node, event.clientX);
	});
	view.picture.addEventListener("pointermove", (event) => {
		const state = node.birefnetPreview;
		if (!state?.dragging) return;
		own(event);
		if (event.buttons === 0) {
			state.dragging = false;
			return;
		}
		setSplit(node, event.clientX);
	});
	const stop = (event) => {
		const state = node.birefnetPreview;
		if (!state?.dragging) return;
		own(event);
		if (event.type === "pointerup") setSplit(node, event.clientX);
		state.dragging = false;
	};
	view.picture.addEventListener("pointerup", stop);
	view.picture.addEventListener("pointercancel", stop);
	for (const [button, delta] of [[view.prev, -1], [view.next, 1]]) {
		button.addEventListener("pointerdown", (event) => event.stopPropagation());
		button.addEventListener("click", (event) => {
			own(event);
			stepFrame(node, delta);
		});
	}
}
