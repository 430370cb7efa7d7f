"""Two models compared on the same images (``core.study.diff``, re-exported here as the
public contract ``core.diff.compare_models``): see that module for the columns, the attention
distance and the calibration binning."""
from .study.diff import (DIFF_COLUMNS, ECE_BINS, FLIP_KINDS, FUSED, UNLABELLED_KINDS,
                         DiffSummary, attention_change, change_columns, compare_models,
                         expected_calibration_error, flip_kinds, layer_change, reliability,
                         summarize, total_variation)

__all__ = ["DIFF_COLUMNS", "ECE_BINS", "FLIP_KINDS", "FUSED", "UNLABELLED_KINDS", "DiffSummary",
           "attention_change", "change_columns", "compare_models", "expected_calibration_error",
           "flip_kinds", "layer_change", "reliability", "summarize", "total_variation"]
