// A canvas-drawn widget, shared by the pack's extension modules: it works with the legacy
// LiteGraph and the current one alike, and its value is never serialized, so prompts and saved
// workflows are unchanged. A helper of birefnet.js; registers nothing by itself.

/** The widget `name` with the given methods (draw, computeSize, mouse, ...). */
export function drawnWidget(name, methods) {
	return { name, type: name, value: null, serialize: false, options: { serialize: false },
		...methods };
}
