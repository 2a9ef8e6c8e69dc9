"""BiRefNetEvaluate: score predicted masks against ground-truth masks (the paper's metrics)."""
from __future__ import annotations

import json
import threading

import torch

from .. import birefnet_core
from ..birefnet_core import metrics
from .runtime import interrupt_aware_progress
from .tensors import NodeInputError, broadcast_batches, mask_to_nchw

NODE = "BiRefNetEvaluate"


class BiRefNetEvaluate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mask": ("MASK", {"tooltip": "The predicted masks (1 = foreground); a batch is "
                                         "scored as one data set."}),
            "ground_truth": ("MASK", {"tooltip": "The true masks, in the same order and size "
                                                 "(one mask serves a whole batch); foreground "
                                                 "where above 0.5."}),
        }}

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("table", "json")
    OUTPUT_TOOLTIPS = ("The paper's table: maxFm, wFmeasure, MAE, Smeasure, meanEm, HCE, "
                       "maxEm, meanFm, adpEm, adpFm, mBA, maxBIoU, meanBIoU.",
                       "Every number as JSON, with the F-measure, E-measure and boundary IoU "
                       "curves (256 thresholds).")
    FUNCTION = "run"
    OUTPUT_NODE = True         # runs without a consumer; the table shows on the node
    CATEGORY = "BiRefNet"
    DESCRIPTION = ("Score masks with the BiRefNet paper's metrics, computed as its official "
                   "evaluator does (masks are quantised to 8 bits first, as saved PNGs are).")

    def run(self, mask: torch.Tensor, ground_truth: torch.Tensor) -> dict:
        table, data = self.evaluate(mask, ground_truth)
        return {"ui": {"birefnet_metrics": [table]}, "result": (table, data)}

    def evaluate(self, mask: torch.Tensor, ground_truth: torch.Tensor) -> tuple[str, str]:
        pred, truth = mask_to_nchw(mask, NODE), mask_to_nchw(ground_truth, NODE)
        if tuple(pred.shape[-2:]) != tuple(truth.shape[-2:]):
            raise NodeInputError(
                f"{NODE}: the masks are {pred.shape[-1]}x{pred.shape[-2]} but the ground "
                f"truth is {truth.shape[-1]}x{truth.shape[-2]} (width x height); score masks "
                "at the ground truth's size")
        parts = broadcast_batches(NODE, mask=pred, ground_truth=truth)
        preds = parts["mask"][:, 0].cpu().numpy()
        truths = parts["ground_truth"][:, 0].cpu().numpy()
        suite = metrics.MetricSuite()
        report = interrupt_aware_progress(len(preds))
        done = [0]
        reporting = threading.Lock()

        def one_more() -> None:                    # on a scoring thread; Cancel stops them all
            with reporting:
                done[0] += 1
                report(done[0], len(preds))
        try:
            suite.add_pairs(preds, truths, on_pair=one_more, item="mask")
        except birefnet_core.InputError as error:
            raise NodeInputError(f"{NODE}: {error}") from error
        results = suite.results()
        table = f"{len(suite)} masks\n{metrics.format_table(results)}"
        return table, json.dumps({"masks": len(suite), **results}, indent=2)
