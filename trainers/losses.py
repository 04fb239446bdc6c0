"""Training objectives: next-token loss on answer tokens and the sigmoid DPO loss.

Labels follow the Hugging Face convention: ``labels[b, t]`` is the token at
position t, ``-100`` where it is not part of an answer (prompt, visual tokens,
padding). Logits at position t predict the token at t+1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next label token and the mask of answer positions.

    logits: (B, T, V); labels: (B, T) → logp (B, T-1), mask (B, T-1) bool.
    """
    targets = labels[:, 1:]                      # (B, T-1)
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return picked * mask, mask


def ntp_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood over the answer tokens of the batch; returns (loss, n answer tokens)."""
    logp, mask = token_logprobs(logits, labels)
    n = int(mask.sum())
    if n == 0:
        raise ValueError("batch has no answer tokens (all labels are -100); check the collator's answer mask")
    return -logp.sum() / n, n


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of answer-token log-probs per sequence: (B, T, V), (B, T) → (B,). The DPO policy/reference term."""
    logp, _ = token_logprobs(logits, labels)
    return logp.sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Sigmoid DPO loss (Rafailov et al. 2023, Eq. 7), all inputs (B,) summed answer log-probs.

    loss = -log σ(β [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]), mean over B.
    Also returns the implicit rewards β (log π − log π_ref) for chosen and rejected.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    return {"loss": loss, "chosen_reward": chosen_reward.detach(), "rejected_reward": rejected_reward.detach(),
            "accuracy": (chosen_reward > rejected_reward).float().mean().detach()}
