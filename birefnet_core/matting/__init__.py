"""Matting: what is done with a mask and its image after the network.

``foreground`` estimates the subject's own colours at soft edges (multilevel and blur
fusion), ``refine`` post-processes masks (guided filter, grow/shrink, feather, edge band),
``box_filter`` holds the running-sum box filters both use. Imports nothing of the network.
"""
from .foreground import estimate_foreground
from .refine import refine_mask

__all__ = ["estimate_foreground", "refine_mask"]
