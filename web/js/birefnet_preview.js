// Before/after preview of a BiRefNet cutout, drawn inside the node on LiteGraph's canvas.
//
// The nodes send `birefnet_preview` (nodes/preview.py): up to four frames of the batch, each a
// source PNG ("before") and an RGBA cutout PNG ("after") in ComfyUI's temp folder. This module
// only draws them; the node's outputs are never touched. It is a helper of birefnet.js and
// registers nothing by itself.
//
// State lives on the node as `node.birefnetPreview`:
//   entries: [{index, count, before: Image, after: Image, ready: {before, after}}]
//   current: which entry is shown; split: 0..1, the share of the width showing "before";
//   dragging: whether the split is being dragged; frameLabel: "frame i of B" for a batch;
//   imageRect / prevRect / nextRect: where the picture and the arrows were last drawn, in node
//   coordinates (x from the node's left, y from the top of its body).

import { drawnWidget } from "./birefnet_widget.js";

export const PREVIEW_WIDGET = "birefnet_preview";

const MARGIN = 10;
const HEADER = 22;
const FOOTER = 6;
const MIN_AREA = 64;
const MAX_AREA = 384;
const MIN_WIDTH = 280;
const CHECKER = 8;
const ARROW = 20;

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
	image.onload = () => {
		entry.ready[which] = true;
		fitNode(node);
		node.setDirtyCanvas?.(true, true);
	};
	image.onerror = () => {
		entry.failed = true;
		console.warn(`BiRefNet preview: could not load ${ref.filename}`);
		node.setDirtyCanvas?.(true, true);
	};
	image.src = viewURL(api, ref);
	return image;
}

/** Show the frames of one `birefnet_preview` message on the node (called from onExecuted). */
export function showPreview(node, message, api) {
	if (!Array.isArray(message) || message.length === 0) return;
	const previous = node.birefnetPreview;
	const state = previous ?? { split: 0.5, current: 0, dragging: false };
	state.entries = message
		.filter((item) => item?.before?.filename && item?.after?.filename)
		.map((item) => {
			const entry = { index: item.index ?? 0, count: item.count ?? 1,
				ready: { before: false, after: false }, failed: false };
			entry.before = loadImage(api, item.before, entry, "before", node);
			entry.after = loadImage(api, item.after, entry, "after", node);
			return entry;
		});
	if (!state.entries.length) return;
	state.current = Math.min(state.current, state.entries.length - 1);
	state.dragging = false;
	node.birefnetPreview = state;
	if (!node.widgets?.some((w) => w.name === PREVIEW_WIDGET)) {
		node.addCustomWidget(previewWidget(node));
	}
	fitNode(node);
	node.setDirtyCanvas?.(true, true);
}

/** Step the shown frame by delta (wraps around). */
export function stepFrame(node, delta) {
	const state = node.birefnetPreview;
	if (!state?.entries?.length) return;
	const n = state.entries.length;
	state.current = (((state.current + delta) % n) + n) % n;
	fitNode(node);
	node.setDirtyCanvas?.(true, true);
}

/** Height/width of the shown frame (1 until its image has loaded). */
function aspect(state) {
	const image = state?.entries?.[state.current]?.before;
	if (image && image.naturalWidth > 0 && image.naturalHeight > 0) {
		return image.naturalHeight / image.naturalWidth;
	}
	return 1;
}

function areaHeight(node) {
	const width = Math.max(1, node.size[0] - 2 * MARGIN);
	return Math.round(Math.min(MAX_AREA, Math.max(MIN_AREA, width * aspect(node.birefnetPreview))));
}

function widgetHeight(node) {
	return HEADER + areaHeight(node) + FOOTER;
}

/** Widen the node to a usable width and fit its height to the preview: grow it when it is too
 * short, shrink it back when the height is still the one set here (not the user's). */
function fitNode(node, minimum = 0) {
	if (!node.size || !node.computeSize) return;
	const state = node.birefnetPreview;
	const width = Math.max(node.size[0], MIN_WIDTH);
	if (width !== node.size[0]) node.setSize([width, node.size[1]]);
	const needed = Math.max(node.computeSize()[1], minimum);
	const ours = state && Math.abs(node.size[1] - (state.fittedHeight ?? -1)) < 0.5;
	if (needed > node.size[1] + 0.5 || (ours && Math.abs(needed - node.size[1]) >= 0.5)) {
		node.setSize([node.size[0], needed]);
		if (state) state.fittedHeight = node.size[1];
		node.setDirtyCanvas?.(true, true);
	}
}

function inside(rect, x, y) {
	return !!rect && x >= rect.x && x <= rect.x + rect.w && y >= rect.y && y <= rect.y + rect.h;
}

const patterns = new WeakMap();

function checkerPattern(ctx) {
	let pattern = patterns.get(ctx);
	if (pattern) return pattern;
	const tile = document.createElement("canvas");
	tile.width = tile.height = 2 * CHECKER;
	const t = tile.getContext("2d");
	t.fillStyle = "#f2f2f2";
	t.fillRect(0, 0, 2 * CHECKER, 2 * CHECKER);
	t.fillStyle = "#c4c4c4";
	t.fillRect(0, 0, CHECKER, CHECKER);
	t.fillRect(CHECKER, CHECKER, CHECKER, CHECKER);
	pattern = ctx.createPattern(tile, "repeat");
	patterns.set(ctx, pattern);
	return pattern;
}

function drawArrow(ctx, rect, direction) {
	ctx.fillStyle = "#3a3a3a";
	ctx.beginPath();
	ctx.roundRect ? ctx.roundRect(rect.x, rect.y, rect.w, rect.h, 4)
		: ctx.rect(rect.x, rect.y, rect.w, rect.h);
	ctx.fill();
	const cx = rect.x + rect.w / 2;
	const cy = rect.y + rect.h / 2;
	ctx.fillStyle = "#ddd";
	ctx.beginPath();
	ctx.moveTo(cx + direction * 4, cy);
	ctx.lineTo(cx - direction * 3, cy - 5);
	ctx.lineTo(cx - direction * 3, cy + 5);
	ctx.closePath();
	ctx.fill();
}

function drawHeader(ctx, state, entry, width, y, lowQuality) {
	ctx.font = "12px Arial, sans-serif";
	ctx.textBaseline = "middle";
	const mid = y + HEADER / 2;
	const right = width - MARGIN;
	const batch = entry.count > 1;
	const label = batch ? `frame ${entry.index + 1} of ${entry.count}` : null;
	const arrows = batch && state.entries.length > 1;
	state.frameLabel = label;
	state.prevRect = state.nextRect = null;
	if (arrows) {
		const top = y + (HEADER - 16) / 2;
		const labelWidth = ctx.measureText(label).width;
		state.nextRect = { x: right - ARROW, y: top, w: ARROW, h: 16 };
		state.prevRect = { x: right - 2 * ARROW - 12 - labelWidth, y: top, w: ARROW, h: 16 };
		drawArrow(ctx, state.prevRect, -1);
		drawArrow(ctx, state.nextRect, 1);
	}
	if (lowQuality) return;         // zoomed far out: no text, as for the other widgets
	ctx.textAlign = "left";
	ctx.fillStyle = "#aaa";
	ctx.fillText("before | cutout", MARGIN, mid);
	if (label) {
		ctx.textAlign = "right";
		ctx.fillStyle = "#ddd";
		ctx.fillText(label, arrows ? right - ARROW - 6 : right, mid);
	}
}

function drawPicture(ctx, state, entry, rect) {
	ctx.save();
	ctx.beginPath();
	ctx.rect(rect.x, rect.y, rect.w, rect.h);
	ctx.clip();
	ctx.translate(rect.x, rect.y);
	ctx.fillStyle = checkerPattern(ctx);
	ctx.fillRect(0, 0, rect.w, rect.h);
	ctx.translate(-rect.x, -rect.y);
	const splitX = rect.x + state.split * rect.w;
	if (entry.ready.before) {
		ctx.save();
		ctx.beginPath();
		ctx.rect(rect.x, rect.y, splitX - rect.x, rect.h);
		ctx.clip();
		ctx.drawImage(entry.before, rect.x, rect.y, rect.w, rect.h);
		ctx.restore();
	}
	if (entry.ready.after) {
		ctx.save();
		ctx.beginPath();
		ctx.rect(splitX, rect.y, rect.x + rect.w - splitX, rect.h);
		ctx.clip();
		ctx.drawImage(entry.after, rect.x, rect.y, rect.w, rect.h);
		ctx.restore();
	}
	ctx.restore();
	// The split: a line with a round handle.
	ctx.strokeStyle = "#ffffff";
	ctx.lineWidth = 2;
	ctx.beginPath();
	ctx.moveTo(splitX, rect.y);
	ctx.lineTo(splitX, rect.y + rect.h);
	ctx.stroke();
	ctx.fillStyle = "#1e88e5";
	ctx.beginPath();
	ctx.arc(splitX, rect.y + rect.h / 2, 6, 0, 2 * Math.PI);
	ctx.fill();
	ctx.stroke();
	if (entry.failed) {
		ctx.fillStyle = "#e53935";
		ctx.textAlign = "center";
		ctx.fillText("preview unavailable", rect.x + rect.w / 2, rect.y + 12);
	}
}

function draw(node, ctx, width, y, lowQuality = false) {
	const state = node.birefnetPreview;
	const entry = state?.entries?.[state.current];
	if (!entry) return;
	const bottom = y + widgetHeight(node);
	if (node.size[1] < bottom - 0.5) {
		fitNode(node, bottom);      // made wider (so the picture is taller) or shorter by the user
	}
	ctx.save();
	drawHeader(ctx, state, entry, width, y, lowQuality);
	const areaW = width - 2 * MARGIN;
	const areaH = areaHeight(node);
	const ratio = aspect(state);
	let w = areaW;
	let h = areaW * ratio;
	if (h > areaH) {
		h = areaH;
		w = areaH / ratio;
	}
	const rect = { x: MARGIN + (areaW - w) / 2, y: y + HEADER + (areaH - h) / 2, w, h };
	state.imageRect = rect;
	drawPicture(ctx, state, entry, rect);
	ctx.restore();
}

function setSplit(state, x) {
	const rect = state.imageRect;
	state.split = Math.min(1, Math.max(0, (x - rect.x) / rect.w));
}

function mouse(node, event, pos) {
	const state = node.birefnetPreview;
	if (!state?.entries?.length) return false;
	const [x, y] = pos;
	const type = event?.type ?? "";
	if (type.endsWith("down")) {
		if (inside(state.prevRect, x, y)) {
			stepFrame(node, -1);
			return true;
		}
		if (inside(state.nextRect, x, y)) {
			stepFrame(node, 1);
			return true;
		}
		if (inside(state.imageRect, x, y)) {
			state.dragging = true;
			setSplit(state, x);
			return true;
		}
		return false;
	}
	if (type.endsWith("move")) {
		if (!state.dragging) return false;
		if (event.buttons === 0) {
			state.dragging = false;
			return true;
		}
		setSplit(state, x);
		return true;
	}
	if (type.endsWith("up")) {
		const was = state.dragging;
		if (was && state.imageRect) setSplit(state, x);
		state.dragging = false;
		return was;
	}
	return false;
}

/** The preview: picture, split handle and frame arrows, drawn on the canvas. */
function previewWidget(node) {
	return drawnWidget(PREVIEW_WIDGET, {
		draw(ctx, _node, width, y, _height, lowQuality) {
			draw(node, ctx, width, y, !!lowQuality);
		},
		computeSize(width) {
			return [width ?? node.size[0], widgetHeight(node)];
		},
		mouse(event, pos) {
			return mouse(node, event, pos);
		},
	});
}
