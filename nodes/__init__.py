"""ComfyUI nodes of the pack (V1 node API: it works from the 2024 ComfyUI to today's)."""
from .composite import BiRefNetComposite
from .detail import BiRefNetDetail
from .evaluate import BiRefNetEvaluate
from .loader import BiRefNetLoader
from .refine_edges import BiRefNetRefineEdges
from .routes import register_routes
from .save_matte import BiRefNetSaveMatte
from .segment import BiRefNetSegment
from .video_matte import BiRefNetVideoMatte

NODE_CLASS_MAPPINGS = {
    "BiRefNetLoader": BiRefNetLoader,
    "BiRefNetSegment": BiRefNetSegment,
    "BiRefNetComposite": BiRefNetComposite,
    "BiRefNetRefineEdges": BiRefNetRefineEdges,
    "BiRefNetDetail": BiRefNetDetail,
    "BiRefNetVideoMatte": BiRefNetVideoMatte,
    "BiRefNetEvaluate": BiRefNetEvaluate,
    "BiRefNetSaveMatte": BiRefNetSaveMatte,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BiRefNetLoader": "BiRefNet Loader",
    "BiRefNetSegment": "BiRefNet Segment",
    "BiRefNetComposite": "BiRefNet Composite",
    "BiRefNetRefineEdges": "BiRefNet Refine Edges",
    "BiRefNetDetail": "BiRefNet Detail",
    "BiRefNetVideoMatte": "BiRefNet Video Matte",
    "BiRefNetEvaluate": "BiRefNet Evaluate",
    "BiRefNetSaveMatte": "BiRefNet Save Matte",
}

register_routes()        # GET /birefnet/models for the web extension; nothing outside a server
