"""Image files: listing, reading (upright 8-bit RGB) and writing masks and cut-outs under the
names every command uses, atomically; mattes with their alpha as clips or sequences."""
from .images import IMAGE_SUFFIXES, collect_images, read_image, save_outputs
from .matte import FORMATS as MATTE_FORMATS, MatteWriteError, MattesWritten, write_matte

__all__ = ["IMAGE_SUFFIXES", "MATTE_FORMATS", "MatteWriteError", "MattesWritten", "collect_images",
           "read_image", "save_outputs", "write_matte"]
