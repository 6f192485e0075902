"""Recovery after surgery, one folder per stage: `rescale` (retraining-free least squares, Kwon
et al. 2022) and `distillation` (knowledge distillation from the full model, in-process or on
Ray Train)."""

from __future__ import annotations

from .distillation import DistillConfig, distill, distill_stage, distill_texts
from .rescale import Rescale, ls_rescale

__all__ = ["DistillConfig", "Rescale", "distill", "distill_stage", "distill_texts", "ls_rescale"]
