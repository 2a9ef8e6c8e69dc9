"""The network: BiRefNet's modules and nothing else.

``model`` (the whole network), ``decoder`` and ``blocks`` (the bilateral-reference decoder),
``backbones`` (Swin v1, PVT v2), ``deform_conv`` (deformable convolution in plain PyTorch),
``folding`` (BatchNorm folded into the convolutions for inference), ``variants`` (a frozen
dataclass per released configuration and their registry), and the optional speed paths:
``cpu_kernels`` (packed oneDNN linear kernels), ``compiled`` (torch.compile with an eager
fallback) and ``int8`` (dynamically quantised linear layers). It imports nothing else of the
package but its errors: checkpoints, inference and matting build on it, never the reverse.
"""
from .folding import fold_batchnorm
from .model import BiRefNet
from .variants import VARIANTS, BiRefNetVariant, get_variant

__all__ = ["VARIANTS", "BiRefNet", "BiRefNetVariant", "fold_batchnorm", "get_variant"]
