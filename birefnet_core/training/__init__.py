"""Training: the paper's losses (``losses``), the training forward with its side outputs
(``forward``) and fine-tuning on a folder of image/mask pairs (``finetune``). The inference
path never imports this package.
"""
from .finetune import FinetuneOptions, FinetuneResult, finetune
from .forward import training_forward, training_loss

__all__ = ["FinetuneOptions", "FinetuneResult", "finetune", "training_forward", "training_loss"]
