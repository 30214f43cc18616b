"""Prompt learners: CoOp text prompts, VPT visual prompts and UPT unified prompts."""

from .base import PromptLearner, PromptTensors
from .coop import CLASS_TOKEN_POSITIONS, ClassPromptLayout, CoOpPromptLearner
from .upt import ATTENTION_MODES, UPTPromptLearner
from .vpt import REFERENCE_TEMPLATES, VPTPromptLearner

__all__ = [
    "ATTENTION_MODES",
    "CLASS_TOKEN_POSITIONS",
    "REFERENCE_TEMPLATES",
    "ClassPromptLayout",
    "CoOpPromptLearner",
    "PromptLearner",
    "PromptTensors",
    "UPTPromptLearner",
    "VPTPromptLearner",
]
