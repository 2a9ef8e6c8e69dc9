"""ComfyUI nodes of the pack (V1 node API: it works from the 2024 ComfyUI to today's)."""
from .composite import BiRefNetComposite
from .loader import BiRefNetLoader
from .segment import BiRefNetSegment

NODE_CLASS_MAPPINGS = {
    "BiRefNetLoader": BiRefNetLoader,
    "BiRefNetSegment": BiRefNetSegment,
    "BiRefNetComposite": BiRefNetComposite,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BiRefNetLoader": "BiRefNet Loader",
    "BiRefNetSegment": "BiRefNet Segment",
    "BiRefNetComposite": "BiRefNet Composite",
}
