// A DOM widget for the pack's extension modules: an HTML element inside the node, through
// `node.addDOMWidget`, which the 2024 frontend and the current one both offer. The classic
// canvas places the element over the node; "Nodes 2.0" (the Vue renderer) puts it in the node's
// own DOM. Widgets drawn on the canvas through draw() do not show their images there, which is
// why the pack uses elements. A helper of birefnet.js; registers nothing by itself.

/** Margin the classic canvas keeps around a DOM widget's element (both frontends use 10). */
export const DOM_MARGIN = 10;

/** An element with the given tag, class and inline style. */
export function element(tag, className = "", style = {}) {
	const made = document.createElement(tag);
	if (className) made.className = className;
	Object.assign(made.style, style);
	return made;
}

/** Add `root` to node as the widget `name` whose height (in canvas units, margins included)
 * is height(); `extra`: more DOM widget options (onDraw: called when the canvas draws it). Its
 * value is never serialized, so prompts and saved workflows are unchanged. */
export function addElementWidget(node, name, root, height, extra = {}) {
	// The frontends show and hide the element they hold through its style.display: the
	// content (root) goes in a plain host, so its own display (flex) stays.
	const host = element("div", `${name}-host`, { boxSizing: "border-box" });
	host.append(root);
	const widget = node.addDOMWidget(name, name, host, {
		serialize: false,
		hideOnZoom: false,
		// The current frontend: show it in the node in both renderers, never in the side panel
		// (an element can only be in one place).
		surfaces: { canvas: "shown", vueNode: "shown", panel: "never" },
		getValue: () => null,
		setValue: () => {},
		getMinHeight: () => height(),
		getMaxHeight: () => height(),
		getHeight: () => height(),
		...extra,
	});
	widget.serialize = false;
	widget.serializeValue = () => undefined;
	widget.content = root;
	setMinHeight(widget, height);
	return widget;
}

/** The Vue renderer sizes a widget's row by its element: give the element the height too. */
function setMinHeight(widget, height) {
	const inner = `${Math.max(0, height() - 2 * DOM_MARGIN)}px`;
	widget.element.style.minHeight = inner;
	widget.content.style.minHeight = inner;
}

/** Tell the node that a widget's height changed: grow the node (never past what the user
 * chose) or, when `shrink`, set the height the widgets need. Returns the height set. */
export function refitNode(node, widget, height, shrink = false) {
	setMinHeight(widget, height);
	if (!node.size || !node.setSize) return null;
	const needed = node.computeSize?.()?.[1] ?? node.size[1];
	const target = shrink ? needed : Math.max(node.size[1], needed);
	// setSize also runs the frontend's onResize, which places DOM widgets and grows the node
	// when their heights do not fit (the 2024 frontend counts DOM widgets only there).
	node.setSize([node.size[0], target]);
	node.setDirtyCanvas?.(true, true);
	return node.size[1];
}
