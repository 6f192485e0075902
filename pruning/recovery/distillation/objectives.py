"""Distillation objectives: how far the pruned student is from the full teacher on one batch.

- embedding (bi-encoders): 1 - cosine to the teacher's pooled, unit-norm embedding, plus a
  relational term, the MSE between the student's and the teacher's in-batch similarity matrices,
  so the student lives in the teacher's vector space (the two tiers can share one index);
- logits (classifiers, cross-encoders): KL(teacher || student) on temperature-scaled logits
  (x T^2, Hinton et al.); a single logit (a cross-encoder score) uses MSE;
- tokens (decoder LMs): per-token KL to the teacher's next-token distribution. The teacher's
  distribution is cached as its top-k tokens (k = `TOP_K`, all of them for a small vocabulary),
  renormalised, so a 49k-word vocabulary does not need 49k floats per cached token;
- hidden states (optional, any task): MSE of every kept layer's output to its teacher layer,
  matched through the kept-layer indices, with a learned linear map where widths differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

from tierserve.pruning.tasks import Task, TaskModel, mean_pool

__all__ = ["TOP_K", "HiddenMaps", "Objective", "TeacherOut", "choose_objective", "embedding_loss",
           "hidden_loss", "logits_loss", "objective_loss", "student_forward", "teacher_forward",
           "token_loss"]

TOP_K = 256  # cached teacher tokens per position for the `tokens` objective


class Objective(StrEnum):
    embedding = "embedding"
    logits = "logits"
    tokens = "tokens"


def choose_objective(tm: TaskModel, override: str = "auto") -> Objective:
    """`auto`: tokens for decoder LMs, logits for classifiers/cross-encoders, else embedding."""
    if override != "auto":
        return Objective(override)
    if tm.task is Task.text_generation:
        return Objective.tokens
    return Objective.logits if tm.is_classifier else Objective.embedding


@dataclass(frozen=True)
class TeacherOut:
    """The teacher's cached targets for one batch (on the CPU)."""

    out: torch.Tensor  # embedding (B, d) | logits (B, C) | tokens: top-k log-probs (N, k)
    index: torch.Tensor | None = None  # tokens: top-k token ids (N, k)
    hidden: tuple[torch.Tensor, ...] | None = None  # per kept layer, real tokens (N, d_t)


def embedding_loss(s: torch.Tensor, t: torch.Tensor, relational: float = 1.0) -> torch.Tensor:
    """s, t (B, d) unit norm -> mean (1 - cos) + relational x MSE of (B, B) similarity matrices."""
    loss = (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    if relational and s.shape[0] > 1:
        loss = loss + relational * F.mse_loss(s @ s.T, t @ t.T)
    return loss


def logits_loss(s: torch.Tensor, t: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """s, t (B, C) logits -> T^2 KL(softmax(t/T) || softmax(s/T)); one logit -> MSE."""
    if s.shape[-1] == 1:
        return F.mse_loss(s, t)
    T = temperature
    return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                    reduction="batchmean") * T * T


def token_loss(s: torch.Tensor, top_logp: torch.Tensor, top_idx: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """s (N, V) student logits; teacher top-k log-probs/ids (N, k) -> T^2 KL over the top-k support
    (the teacher's top-k mass renormalised to 1)."""
    T = temperature
    p_t = F.softmax(top_logp / T, -1)  # (N, k) renormalised teacher distribution
    log_s = F.log_softmax(s / T, -1).gather(-1, top_idx)  # (N, k)
    return (p_t * (p_t.clamp_min(1e-12).log() - log_s)).sum(-1).mean() * T * T


class HiddenMaps(nn.Module):
    """One linear map per matched layer where the student's width differs from the teacher's."""

    def __init__(self, d_student: int, d_teacher: int, layers: int) -> None:
        super().__init__()
        same = d_student == d_teacher
        self.maps = nn.ModuleList(nn.Identity() if same else nn.Linear(d_student, d_teacher)
                                  for _ in range(layers))

    def forward(self, k: int, h: torch.Tensor) -> torch.Tensor:
        return self.maps[k](h)


def hidden_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...],
                maps: HiddenMaps) -> torch.Tensor:
    """Mean over matched layers of MSE(map(student layer j), teacher layer kept[j]), (N, d)."""
    losses = [F.mse_loss(maps(k, s), t.to(s.dtype)) for k, (s, t) in
              enumerate(zip(student, teacher, strict=True))]
    return torch.stack(losses).mean()


def _real_tokens(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, d) -> (N, d) over real tokens."""
    return h.flatten(0, 1) if mask is None else h[mask.bool()]


def _forward(tm: TaskModel, batch: dict, layers: tuple[int, ...] | None):
    """The task output (as `TaskModel.outputs`) and, if `layers`, those layers' hidden states."""
    if layers is None:
        return tm.outputs(batch), None
    device = next(tm.model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = batch.get("attention_mask")
    kw = {"use_cache": False} if tm.task is Task.text_generation else {}
    res = tm.model(**batch, output_hidden_states=True, **kw)
    hs = res.hidden_states  # (embeddings, layer 1, ..., layer L), each (B, T, d)
    hidden = tuple(_real_tokens(hs[i + 1], mask) for i in layers)
    if tm.task in (Task.embedding, Task.rerank) and not tm.cross_encoder:
        out = F.normalize(mean_pool(res.last_hidden_state, batch["attention_mask"]), dim=-1)
    elif tm.task is Task.text_generation:
        out = _real_tokens(res.logits, mask)
    else:
        out = res.logits
    return out, hidden


@torch.no_grad()
def teacher_forward(tm: TaskModel, batch: dict, objective: Objective,
                    layers: tuple[int, ...] | None = None) -> TeacherOut:
    """The cached targets of one batch: outputs (top-k for tokens) and kept layers' states."""
    out, hidden = _forward(tm, batch, layers)
    out = out.float()
    hidden = tuple(h.half().cpu() for h in hidden) if hidden is not None else None  # half: RAM
    if objective is Objective.tokens:
        logp = F.log_softmax(out, -1)
        top = logp.topk(min(TOP_K, logp.shape[-1]), dim=-1)
        return TeacherOut(top.values.cpu(), top.indices.cpu(), hidden)
    return TeacherOut(out.cpu(), None, hidden)


def student_forward(tm: TaskModel, batch: dict, hidden: bool):
    """Student outputs and (if `hidden`) every one of its layers' states, with grad."""
    layers = tuple(range(int(tm.model.config.num_hidden_layers))) if hidden else None
    return _forward(tm, batch, layers)


def objective_loss(objective: Objective, s: torch.Tensor, t: TeacherOut, *,
                   temperature: float = 2.0, relational: float = 1.0) -> torch.Tensor:
    """The output-matching loss of one batch."""
    target = t.out.to(s.device)
    if objective is Objective.embedding:
        return embedding_loss(s.float(), target, relational)
    if objective is Objective.logits:
        return logits_loss(s.float(), target, temperature)
    return token_loss(s.float(), target, t.index.to(s.device), temperature)
