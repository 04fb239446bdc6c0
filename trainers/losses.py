"""Training objectives: next-token loss on answer tokens and the sigmoid DPO loss.

Labels follow the Hugging Face convention: ``labels[b, t]`` is the token at
position t, ``-100`` where it is not part of an answer (prompt, visual tokens,
padding). Logits at position t predict the token at t+1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is an answer token: (B, T) labels -> (B, T-1) bool."""
    return labels[:, 1:] != IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next label token and the mask of answer positions.

    logits: (B, T, V); labels: (B, T) → logp (B, T-1), mask (B, T-1) bool.
    """
    targets = labels[:, 1:]                      # (B, T-1)
    mask = answer_mask(labels)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return picked * mask, mask


def ntp_loss(logits: torch.Tensor, labels: torch.Tensor, normaliser: int | None = None) -> tuple[torch.Tensor, int]:
    """Negative log-likelihood summed over the batch's answer tokens and divided by ``normaliser``; returns
    (loss, n answer tokens). Default ``normaliser``: n, the batch mean. The trainer passes the answer-token count
    of the whole global batch, so the micro-batch losses of all ranks add up to the global batch's token mean."""
    logp, mask = token_logprobs(logits, labels)
    n = int(mask.sum())
    if normaliser is None:
        if n == 0:
            raise ValueError("batch has no answer tokens (all labels are -100); check the collator's answer mask")
        normaliser = n
    return -logp.sum() / normaliser, n


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of answer-token log-probs per sequence: (B, T, V), (B, T) → (B,). The DPO policy/reference term."""
    logp, _ = token_logprobs(logits, labels)
    return logp.sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
             normaliser: int | None = None) -> dict[str, torch.Tensor]:
    """Sigmoid DPO loss (Rafailov et al. 2023, Eq. 7), all inputs (B,) summed answer log-probs.

    loss = -log σ(β [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]), summed over the B
    pairs and divided by ``normaliser`` (default B: the mean; the trainer passes the pairs of the global batch).
    Also returns the implicit rewards β (log π − log π_ref) for chosen and rejected.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).sum() / (normaliser or policy_chosen.shape[0])
    return {"loss": loss, "chosen_reward": chosen_reward.detach(), "rejected_reward": rejected_reward.detach(),
            "accuracy": (chosen_reward > rejected_reward).float().mean().detach()}
