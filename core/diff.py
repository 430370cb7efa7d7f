"""Two models compared on the same images (``core.study.diff`` and ``diff_summary``,
re-exported here as the public contract ``core.diff.compare_models``): see those modules for
the columns, the attention distance and the calibration binning."""
from .study.diff import (DIFF_COLUMNS, FLIP_KINDS, FUSED, UNLABELLED_KINDS, attention_change,
                         change_columns, compare_models, flip_kinds, layer_change,
                         total_variation)
from .study.diff_summary import (ECE_BINS, DiffSummary, expected_calibration_error,
                                 reliability, summarize)

__all__ = ["DIFF_COLUMNS", "ECE_BINS", "FLIP_KINDS", "FUSED", "UNLABELLED_KINDS", "DiffSummary",
           "attention_change", "change_columns", "compare_models", "expected_calibration_error",
           "flip_kinds", "layer_change", "reliability", "summarize", "total_variation"]
