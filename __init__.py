"""BiRefNet nodes for ComfyUI: faithful, fast, tested background removal.

ComfyUI imports this file to register the pack. Nothing heavy happens here: the network and
its weights are loaded only when a Loader node runs.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
