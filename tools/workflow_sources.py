"""The example workflows in API format, as Python: the single source from which
tools/build_workflows.py writes ``workflows/<name>.api.json`` and, through the real frontend,
the UI-format ``workflows/<name>.json`` and its thumbnail.

Node ids are numbers (as strings) so every frontend loads them; each node has a ``_meta``
title. Photos are ComfyUI's own ``input/example.png``, which every install ships, so the
workflows that need nothing else (01, 03, 05, 06) validate and run as downloaded. Where the
user must supply a file (04's video, 02's Stable Diffusion checkpoint) or act on one (07: paint
the subject in the mask editor), the node's title says so. The BiRefNet model is a known
name, downloaded on first use.
"""
from __future__ import annotations

EXAMPLE_IMAGE = "example.png"           # in every ComfyUI's input folder
EXAMPLE_BACKGROUND = EXAMPLE_IMAGE      # 03 blurs the photo itself; 04 puts the video on it
EXAMPLE_MASKED = EXAMPLE_IMAGE          # 07: the photo, once the subject is painted on it
EXAMPLE_VIDEO = "your_video.mp4"        # no ComfyUI ships a video: the user picks one
SD_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
PICK_VIDEO = "Video (pick your video file)"
PICK_BACKGROUND = "New background (pick a photo)"
PAINT_SUBJECT = "Photo: paint the subject in MaskEditor"
PICK_SD_CHECKPOINT = "SD checkpoint (pick yours)"
MODEL = "BiRefNet"


def _node(class_type: str, title: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def _loader(model: str = MODEL) -> dict:
    return _node("BiRefNetLoader", "BiRefNet Loader", model=model, device="auto", dtype="auto",
                 patch_order="auto", input_normalization="auto", compile=False)


def _segment(model: list, image: list, **options) -> dict:
    inputs = dict(model=model, image=image, resolution=0, batch_size=4, threshold=0.0,
                  invert=False, background_color="#FFFFFF", refine_edges=False)
    inputs.update(options)
    return _node("BiRefNetSegment", "BiRefNet Segment", **inputs)


def _refine(image: list, mask: list, **options) -> dict:
    inputs = dict(image=image, mask=mask, foreground_method="multilevel", guided_radius=0,
                  guided_eps=0.001, grow=0, feather=0.0, band=0)
    inputs.update(options)
    return _node("BiRefNetRefineEdges", "BiRefNet Refine Edges", **inputs)


def _save(images: list, prefix: str, title: str = "Save Image") -> dict:
    return _node("SaveImage", title, images=images, filename_prefix=prefix)


def _save_matte(images: list, mask: list, format: str, prefix: str, title: str,
                alpha: str = "straight", fps: float | list = 24.0, **optional) -> dict:
    return _node("BiRefNetSaveMatte", title, images=images, mask=mask, format=format,
                 alpha=alpha, fps=fps, filename_prefix=prefix, **optional)


def transparent_png() -> dict:
    """1. A photo to a transparent PNG, with decontaminated edge colours."""
    return {
        "1": _node("LoadImage", "Photo", image=EXAMPLE_IMAGE),
        "2": _loader(),
        "3": _segment(["2", 0], ["1", 0]),
        "4": _refine(["1", 0], ["3", 0], band=8),
        "5": _save(["4", 2], "birefnet/cutout", "Save transparent PNG"),
        "6": _node("MaskToImage", "Mask as image", mask=["4", 0]),
        "7": _save(["6", 0], "birefnet/mask", "Save mask"),
    }


def sd_compositing() -> dict:
    """2. Cut a subject out, generate a new background with Stable Diffusion, composite, then
    re-noise only a band around the subject's edge at low denoise so light and seam blend."""
    prompt = ("a sunlit marble kitchen counter by a window, soft morning light, shallow depth "
              "of field, product photography")
    negative = "blurry, lowres, text, watermark"
    return {
        "1": _node("LoadImage", "Product photo", image=EXAMPLE_IMAGE),
        "2": _loader(),
        "3": _segment(["2", 0], ["1", 0]),
        "4": _refine(["1", 0], ["3", 0]),
        "10": _node("CheckpointLoaderSimple", PICK_SD_CHECKPOINT, ckpt_name=SD_CHECKPOINT),
        "11": _node("CLIPTextEncode", "Background prompt", text=prompt, clip=["10", 1]),
        "12": _node("CLIPTextEncode", "Negative prompt", text=negative, clip=["10", 1]),
        "13": _node("EmptyLatentImage", "Background size", width=768, height=512, batch_size=1),
        "14": _node("KSampler", "Generate background", model=["10", 0], seed=42, steps=25,
                    cfg=7.0, sampler_name="euler_ancestral", scheduler="normal",
                    positive=["11", 0], negative=["12", 0], latent_image=["13", 0], denoise=1.0),
        "15": _node("VAEDecode", "Background", samples=["14", 0], vae=["10", 2]),
        "20": _node("BiRefNetComposite", "Subject over background", foreground=["4", 1],
                    mask=["4", 0], background_fit="cover", background_color="#FFFFFF",
                    background=["15", 0]),
        "21": _node("GrowMask", "Grow mask", mask=["4", 0], expand=10, tapered_corners=True),
        "22": _node("GrowMask", "Shrink mask", mask=["4", 0], expand=-10, tapered_corners=True),
        "23": _node("MaskComposite", "Edge band", destination=["21", 0], source=["22", 0], x=0,
                    y=0, operation="subtract"),
        "24": _node("VAEEncode", "Encode composite", pixels=["20", 0], vae=["10", 2]),
        "25": _node("SetLatentNoiseMask", "Re-noise the band only", samples=["24", 0],
                    mask=["23", 0]),
        "26": _node("KSampler", "Blend the seam", model=["10", 0], seed=7, steps=20, cfg=6.0,
                    sampler_name="euler_ancestral", scheduler="normal", positive=["11", 0],
                    negative=["12", 0], latent_image=["25", 0], denoise=0.35),
        "27": _node("VAEDecode", "Blended", samples=["26", 0], vae=["10", 2]),
        "30": _save(["20", 0], "birefnet/sd_composite", "Save composite"),
        "31": _save(["27", 0], "birefnet/sd_blended", "Save blended"),
    }


def background_replacement() -> dict:
    """3. The subject over another background and over a flat colour, edges decontaminated.
    The new background is the photo itself blurred (a portrait-mode look); load another photo
    and connect it to the composite's background instead."""
    return {
        "1": _node("LoadImage", "Photo", image=EXAMPLE_IMAGE),
        "2": _node("ImageBlur", "Background: blurred photo",
                   image=["1", 0], blur_radius=31, sigma=10.0),
        "3": _loader(),
        "4": _segment(["3", 0], ["1", 0]),
        "5": _refine(["1", 0], ["4", 0], guided_radius=2, guided_eps=0.001, band=6),
        "6": _node("BiRefNetComposite", "Over the new background", foreground=["5", 1],
                   mask=["5", 0], background_fit="cover", background_color="#FFFFFF",
                   background=["2", 0]),
        "7": _node("BiRefNetComposite", "Over a colour", foreground=["5", 1], mask=["5", 0],
                   background_fit="cover", background_color="#1E90FF"),
        "8": _save(["6", 0], "birefnet/replaced", "Save over background"),
        "9": _save(["7", 0], "birefnet/colour", "Save over colour"),
    }


def video_matting() -> dict:
    """4. A video's subject over a new background, saved as a video with the original audio."""
    return {
        "1": _node("LoadVideo", PICK_VIDEO, file=EXAMPLE_VIDEO),
        "2": _node("GetVideoComponents", "Frames, audio, fps", video=["1", 0]),
        "3": _node("LoadImage", PICK_BACKGROUND, image=EXAMPLE_BACKGROUND),
        "4": _loader("BiRefNet_lite"),
        "5": _node("BiRefNetVideoMatte", "BiRefNet Video Matte", model=["4", 0],
                   frames=["2", 0], resolution=0, batch_size=0, stabilize=0.5,
                   stabilize_method="median", refine_edges=True, background_color="#00FF00",
                   background=["3", 0]),
        "6": _node("CreateVideo", "Composite video", images=["5", 3], fps=["2", 2],
                   audio=["2", 1]),
        "7": _node("SaveVideo", "Save video", video=["6", 0], filename_prefix="birefnet/video",
                   format="auto", codec="auto"),
        # the matte itself, for an editor: foreground colours with their alpha, 10-bit ProRes
        "8": _save_matte(["5", 1], ["5", 0], "prores_4444", "birefnet/video_matte",
                         "Save matte (ProRes 4444 with alpha)", fps=["2", 2], audio=["2", 1]),
    }


def headless_folder() -> dict:
    """5. One image in, cutout and mask out: the workflow tools/comfy_client.py runs over a
    folder (it swaps the Photo node's image for each file)."""
    return {
        "1": _node("LoadImage", "Photo", image=EXAMPLE_IMAGE),
        "2": _loader(),
        "3": _segment(["2", 0], ["1", 0], refine_edges=True),
        "4": _save(["3", 1], "birefnet/batch/cutout", "Save cutout"),
        "5": _node("MaskToImage", "Mask as image", mask=["3", 0]),
        "6": _save(["5", 0], "birefnet/batch/mask", "Save mask"),
    }


def _detail(model: list, image: list, **options) -> dict:
    inputs = dict(model=model, image=image, scale=1.0, band=0, overlap=0.25, max_tiles=128,
                  batch_size=0, resolution=0)        # 0: tiles per pass from the memory estimate
    inputs.update(options)
    return _node("BiRefNetDetail", "BiRefNet Detail", **inputs)


def large_photo_detail() -> dict:
    """6. A large photo (4K-8K) to a transparent PNG with hair-level edges: the coarse mask
    from Segment, then Detail runs the model again on tiles along the edge at the photo's own
    pixel scale, then Refine Edges decontaminates the colours."""
    return {
        "1": _node("LoadImage", "Large photo", image=EXAMPLE_IMAGE),
        "2": _loader(),
        "3": _segment(["2", 0], ["1", 0]),
        "4": _detail(["2", 0], ["1", 0], mask=["3", 0]),
        "5": _refine(["1", 0], ["4", 0]),
        "6": _save(["5", 2], "birefnet/detail_cutout", "Save transparent PNG"),
        "7": _node("MaskToImage", "Mask as image", mask=["4", 0]),
        "8": _save(["7", 0], "birefnet/detail_mask", "Save mask"),
        # the soft edge beyond 8 bits: a 16-bit PNG and a float EXR (premultiplied, as
        # compositors take it)
        "9": _save_matte(["5", 1], ["5", 0], "png_sequence_16bit", "birefnet/detail_16bit",
                         "Save 16-bit PNG"),
        "10": _save_matte(["5", 1], ["5", 0], "exr_sequence", "birefnet/detail_exr",
                          "Save EXR (float, premultiplied)", alpha="premultiplied"),
    }


def guided_subject() -> dict:
    """7. One subject of several: paint over it in the mask editor (right-click the photo,
    Open in MaskEditor); the painted mask is Segment's guide, so BiRefNet cuts out that
    subject at its full working resolution and nothing else. Run before anything is painted,
    Segment says to paint the subject (or connect a SAM3 Detect mask)."""
    return {
        "1": _node("LoadImage", PAINT_SUBJECT, image=EXAMPLE_MASKED),
        "2": _loader(),
        "3": _segment(["2", 0], ["1", 0], guide=["1", 1]),
        "4": _refine(["1", 0], ["3", 0]),
        "5": _save(["4", 2], "birefnet/guided_cutout", "Save transparent PNG"),
        "6": _node("MaskToImage", "Mask as image", mask=["4", 0]),
        "7": _save(["6", 0], "birefnet/guided_mask", "Save mask"),
    }


WORKFLOWS = {
    "01_transparent_png": transparent_png,
    "02_sd_compositing": sd_compositing,
    "03_background_replacement": background_replacement,
    "04_video_matting": video_matting,
    "05_headless_folder": headless_folder,
    "06_large_photo_detail": large_photo_detail,
    "07_guided_subject": guided_subject,
}
