"""hf_nullspace: approximate nullspace augmented finetuning (Liu et al., CPAL 2025) for Hugging Face ViTs."""

from .adversarial import ADVERSARIAL_MODES, AdversarialArguments
from .analysis import convex_closure, noise_to_pixels, permuted_control, scaling_closure
from .card import build_model_card, write_model_card
from .classifier import load_classifier
from .config import NullspaceArguments
from .embedding import PATCH_EMBEDDING_MODULES, UnsupportedModelError, find_patch_embedding, inject_noise, noise_shape
from .hub import push_run
from .lora import LoraArguments, apply_lora, merge_lora
from .noise_bank import NoiseBank
from .nullspace import PatchNullspace, patch_embedding_nullspace
from .results import RunResults
from .robustness import evaluate_robustness
from .synthesis import NoiseSynthesisResult, epsilon_statistic, synthesize_noise
from .trainer import NullspaceTrainer

__version__ = "0.1.0"

__all__ = [
    "ADVERSARIAL_MODES",
    "AdversarialArguments",
    "LoraArguments",
    "PATCH_EMBEDDING_MODULES",
    "NoiseBank",
    "NoiseSynthesisResult",
    "NullspaceArguments",
    "NullspaceTrainer",
    "PatchNullspace",
    "RunResults",
    "UnsupportedModelError",
    "apply_lora",
    "build_model_card",
    "convex_closure",
    "epsilon_statistic",
    "evaluate_robustness",
    "find_patch_embedding",
    "inject_noise",
    "load_classifier",
    "merge_lora",
    "noise_shape",
    "noise_to_pixels",
    "patch_embedding_nullspace",
    "permuted_control",
    "push_run",
    "scaling_closure",
    "synthesize_noise",
    "write_model_card",
]
