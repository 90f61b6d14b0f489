"""Distillation losses: task loss, soft-target KD, and AdaBERT's attentive hierarchical probe KD.

The efficiency loss lives with the supernet (it needs the op costs and the sample), see
``Supernet.efficiency_loss``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy on gold labels, or MSE for regression tasks."""
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


def blend(task: torch.Tensor, kd: torch.Tensor, gamma: float) -> torch.Tensor:
    """The task-oriented KD objective of every loop: ``(1 - gamma) task + gamma KD``."""
    return (1 - gamma) * task + gamma * kd


def soft_cross_entropy(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, reduce: bool = True
) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's softened distribution, scaled by T^2."""
    targets = torch.softmax(teacher / temperature, dim=-1)
    loss = -(targets * torch.log_softmax(student / temperature, dim=-1)).sum(-1) * temperature**2
    return loss.mean() if reduce else loss


def logits_kd(
    student: torch.Tensor, teacher: torch.Tensor, regression: bool, temperature: float = 1.0
) -> torch.Tensor:
    """KD on final outputs: soft cross-entropy, or MSE to the teacher's prediction for regression."""
    if regression:
        return F.mse_loss(student, teacher)
    return soft_cross_entropy(student, teacher, temperature)


def hidden_state_kd(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """Mean over levels of the per-token MSE between hidden states ``[batch, tokens, dim]``; padding ignored.

    LadaBERT's layer-wise KD: a compressed model keeps the original's shapes, so every level matches.
    """
    if len(student) != len(teacher):
        raise ValueError(f"hidden-state KD needs as many levels: {len(student)} vs {len(teacher)}")
    weight = mask.to(student[0].dtype).unsqueeze(-1)
    count = weight.sum().clamp(min=1.0) * student[0].shape[-1]
    losses = [(((s - t) ** 2) * weight).sum() / count for s, t in zip(student, teacher)]
    return torch.stack(losses).mean()


def matched_layers(num_student: int, num_teacher: int) -> list[int]:
    """Teacher probe matched to each student output m = 0..K: round(m * L / K), halves rounded up."""
    k, big_l = num_student - 1, num_teacher - 1
    return [int(m * big_l / max(k, 1) + 0.5) for m in range(num_student)]


def hierarchical_kd(
    student_probes: Sequence[torch.Tensor],
    teacher_probes: torch.Tensor,
    labels: torch.Tensor,
    regression: bool,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Attentive hierarchical transfer (AdaBERT eq. 4-5).

    Student output m (embedding = 0, cell k = k) is matched to teacher probe round(m L / K); each pair
    contributes a soft cross-entropy (MSE for regression), weighted per example by
    softmax over pairs of -loss(teacher probe, gold): probes that are right and sure count more.
    """
    student = torch.stack(list(student_probes), dim=1)  # [batch, K+1, C]
    teacher = teacher_probes[:, matched_layers(student.shape[1], teacher_probes.shape[1])]
    if regression:
        pair_loss = ((student - teacher) ** 2).mean(-1)
        quality = -((teacher.squeeze(-1) - labels.unsqueeze(1).to(teacher.dtype)) ** 2)
    else:
        pair_loss = soft_cross_entropy(student, teacher, temperature, reduce=False)
        log_probs = torch.log_softmax(teacher, dim=-1)
        index = labels.view(-1, 1, 1).expand(-1, teacher.shape[1], 1)
        quality = log_probs.gather(-1, index).squeeze(-1)
    weights = torch.softmax(quality, dim=1)
    return (weights * pair_loss).sum(1).mean()
