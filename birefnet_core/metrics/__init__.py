"""The BiRefNet paper's evaluation metrics, equal to the official evaluator's numbers.

``suite`` scores pairs and tabulates (``evaluate_pairs``, ``MetricSuite``); ``counts``,
``weighted_f`` and ``boundary`` compute the individual measures; ``skeleton``, ``contours``,
``distance_transform`` and ``morphology`` are the image operations they need (no OpenCV,
SciPy or scikit-image); ``task_pool`` overlaps the pure-Python and array-bound parts.
NumPy only: nothing here imports torch or the rest of the package but its errors.
"""
from .suite import CURVES, TABLE_COLUMNS, MetricSuite, evaluate_pairs, format_table

__all__ = ["CURVES", "TABLE_COLUMNS", "MetricSuite", "evaluate_pairs", "format_table"]
