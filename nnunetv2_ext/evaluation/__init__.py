"""Worst-case evaluation and comparison of segmentations (``nnunetv2_ext_evaluate``, ``nnunetv2_ext_compare``).

Python API (stable; used by the PNSS/HESS demo for its final table)::

    from nnunetv2_ext.evaluation import evaluate_folders, format_markdown_table
    results = {"baseline": evaluate_folders(ref, pred_a), "pnsshess": evaluate_folders(ref, pred_b)}
    print(format_markdown_table(results, metrics=("DSC", "precision", "recall")))
"""
from nnunetv2_ext.evaluation.evaluate import EvaluationResult, compare_folders, evaluate_folders
from nnunetv2_ext.evaluation.io import EvaluationInputError
from nnunetv2_ext.evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, METRICS, mask_metrics
from nnunetv2_ext.evaluation.report import (compare_results, format_comparison_table, format_markdown_table,
                                            plot_comparison, write_comparison_report, write_evaluation_report)

__all__ = ["EvaluationResult", "EvaluationInputError", "evaluate_folders", "compare_folders", "compare_results",
           "format_markdown_table", "format_comparison_table", "plot_comparison", "write_evaluation_report",
           "write_comparison_report", "mask_metrics", "METRICS", "DEFAULT_NSD_TOLERANCE_MM"]
