"""Robustness evaluation: attacks and corruptions in [0, 1] pixel space, benchmark suites, metrics and reports."""

from .attacks import ATTACKS, autoattack, cw_l2, fgsm, patch_fool, pgd, run_attack
from .corruptions import CORRUPTIONS, corrupt
from .evaluate import evaluate_robustness
from .metrics import PAPER_AVERAGE_COLUMNS, corruption_errors, mean_corruption_error, paper_average
from .model import PixelSpaceClassifier
from .report import RobustnessReport
from .suites import SUITES, Evaluation, Suite, get_suite

__all__ = [
    "ATTACKS",
    "CORRUPTIONS",
    "PAPER_AVERAGE_COLUMNS",
    "SUITES",
    "Evaluation",
    "PixelSpaceClassifier",
    "RobustnessReport",
    "Suite",
    "autoattack",
    "corrupt",
    "corruption_errors",
    "cw_l2",
    "evaluate_robustness",
    "fgsm",
    "get_suite",
    "mean_corruption_error",
    "paper_average",
    "patch_fool",
    "pgd",
    "run_attack",
]
