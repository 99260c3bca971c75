"""Multi-class soft Dice loss of Wacker et al. (their Eq. 1-2), built on MONAI's DiceLoss.

    L = 1 - (1 / K) * sum_l 2 * sum_n r_ln p_ln / (sum_n r_ln + sum_n p_ln)

where p are softmax probabilities, r the one-hot reference, l runs over the K classes and n over
every voxel of every sample in the batch (the sums are batch-global, not per sample). The paper
uses the K = 3 tumor classes (background excluded); its public code averages all 4 classes,
which `include_background=True` reproduces.

`cross_entropy_weight` > 0 adds that multiple of the voxel-wise cross-entropy over all four
classes, the combination nnU-Net trains with. Soft Dice alone gives no reward for getting
background right, so a short run can mark large healthy areas as a small class. The
cross-entropy term penalises every wrong voxel.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

# Added to the denominator only, so a class absent from both reference and prediction cannot
# divide by zero; softmax probabilities are never exactly 0, so it changes the value by < 1e-8.
DENOMINATOR_EPSILON = 1e-8


class MultiClassDiceLoss(nn.Module):
    """Soft Dice loss over model classes with batch-global sums.

    Args:
        include_background: also average the Dice of class 0 (K = 4, the reference code's
            variant); default False (K = 3, the paper's loss).
        cross_entropy_weight: weight of an added cross-entropy term; 0 (default) is the
            paper's loss.

    Call with `logits` float (N, K, *spatial) and `target` integer model classes (N, *spatial)
    or (N, 1, *spatial); returns a scalar tensor (in [0, 1] without the cross-entropy term). The loss is computed in float32
    whatever the dtype of `logits`, so mixed precision does not round the sums.
    """

    def __init__(self, include_background: bool = False, cross_entropy_weight: float = 0.0) -> None:
        super().__init__()
        if cross_entropy_weight < 0:
            raise ValueError(f"cross_entropy_weight must be >= 0, got {cross_entropy_weight}")
        self.include_background = include_background
        self.cross_entropy_weight = float(cross_entropy_weight)
        self._dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            smooth_nr=0.0,
            smooth_dr=DENOMINATOR_EPSILON,
            reduction="mean",
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        if target.shape[2:] != logits.shape[2:] or target.shape[0] != logits.shape[0]:
            raise ValueError(f"target of shape {tuple(target.shape)} does not match logits of shape {tuple(logits.shape)}")
        logits = logits.float()
        loss = self._dice(logits, target.long())
        if self.cross_entropy_weight:
            loss = loss + self.cross_entropy_weight * nn.functional.cross_entropy(logits, target[:, 0].long())
        return loss
