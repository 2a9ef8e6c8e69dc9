"""ComfyUI nodes of the pack (V1 node API: it works from the 2024 ComfyUI to today's)."""
from .composite import BiRefNetComposite
from .loader import BiRefNetLoader
from .refine_edges import BiRefNetRefineEdges
from .segment import BiRefNetSegment

NODE_CLASS_MAPPINGS = {
    "BiRefNetLoader": BiRefNetLoader,
    "BiRefNetSegment": BiRefNetSegment,
    "BiRefNetComposite": BiRefNetComposite,
    "BiRefNetRefineEdges": BiRefNetRefineEdges,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BiRefNetLoader": "BiRefNet Loader",
    "BiRefNetSegment": "BiRefNet Segment",
    "BiRefNetComposite": "BiRefNet Composite",
    "BiRefNetRefineEdges": "BiRefNet Refine Edges",
}
