"""Image files: listing, reading (upright 8-bit RGB) and writing masks and cut-outs under the
names every command uses, atomically."""
from .images import IMAGE_SUFFIXES, collect_images, read_image, save_outputs

__all__ = ["IMAGE_SUFFIXES", "collect_images", "read_image", "save_outputs"]
