"""Multi-class soft Dice loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from gliomaseg.training.loss import MultiClassDiceLoss


def _logits_from_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    # softmax(log p) = p for probabilities that sum to 1 over axis 1.
    return probabilities.log()


def _two_voxel_batch() -> tuple[torch.Tensor, torch.Tensor]:
    # Two samples of two voxels each, four classes; probabilities per voxel sum to 1.
    probabilities = torch.tensor(
        [
            [[0.7, 0.1], [0.1, 0.6], [0.1, 0.2], [0.1, 0.1]],
            [[0.25, 0.25], [0.25, 0.25], [0.25, 0.25], [0.25, 0.25]],
        ]
    )
    target = torch.tensor([[0, 1], [3, 2]])
    return probabilities, target


def _hand_dice(probabilities: torch.Tensor, target: torch.Tensor, classes: range) -> list[float]:
    values = []
    for k in classes:
        reference = (target == k).float()
        predicted = probabilities[:, k]
        values.append(float(2 * (reference * predicted).sum() / (reference.sum() + predicted.sum())))
    return values


def test_loss_matches_hand_computed_tumor_classes():
    probabilities, target = _two_voxel_batch()
    # Class 1: r = [0,1 | 0,0], p = [0.1,0.6 | 0.25,0.25]: 2*0.6 / (1 + 1.2) = 0.545454...
    # Class 2: r = [0,0 | 0,1], p = [0.1,0.2 | 0.25,0.25]: 2*0.25 / (1 + 0.8) = 0.277777...
    # Class 3: r = [0,0 | 1,0], p = [0.1,0.1 | 0.25,0.25]: 2*0.25 / (1 + 0.7) = 0.294117...
    expected = 1 - (1.2 / 2.2 + 0.5 / 1.8 + 0.5 / 1.7) / 3
    loss = MultiClassDiceLoss()(_logits_from_probabilities(probabilities), target)
    assert math.isclose(float(loss), expected, rel_tol=1e-6)


def test_loss_with_background_averages_four_classes():
    probabilities, target = _two_voxel_batch()
    expected = 1 - sum(_hand_dice(probabilities, target, range(4))) / 4
    loss = MultiClassDiceLoss(include_background=True)(_logits_from_probabilities(probabilities), target)
    assert math.isclose(float(loss), expected, rel_tol=1e-6)


def test_loss_sums_over_whole_batch():
    # A per-sample mean would differ: sample 2 has no class 1, so its class-1 Dice would be 0.
    probabilities, target = _two_voxel_batch()
    batch_loss = MultiClassDiceLoss()(_logits_from_probabilities(probabilities), target)
    per_sample = [1 - sum(_hand_dice(probabilities[i : i + 1], target[i : i + 1], range(1, 4))) / 3 for i in range(2)]
    assert not math.isclose(float(batch_loss), sum(per_sample) / 2, rel_tol=1e-3)
    assert math.isclose(float(batch_loss), 1 - sum(_hand_dice(probabilities, target, range(1, 4))) / 3, rel_tol=1e-6)


def test_loss_near_zero_for_confident_correct_prediction():
    target = torch.randint(0, 4, (2, 5, 6), generator=torch.Generator().manual_seed(0))
    target[0, 0, :4] = torch.tensor([0, 1, 2, 3])
    logits = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 40.0
    assert float(MultiClassDiceLoss()(logits, target)) < 1e-6


def test_loss_accepts_target_channel_axis():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 4, 5, generator=generator)
    target = torch.randint(0, 4, (2, 3, 4, 5), generator=generator)
    loss = MultiClassDiceLoss()
    assert math.isclose(float(loss(logits, target)), float(loss(logits, target[:, None])), rel_tol=1e-7)


def test_loss_computes_in_float32_for_bf16_logits():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 8, 8, generator=generator)
    target = torch.randint(0, 4, (2, 8, 8), generator=generator)
    value = MultiClassDiceLoss()(logits.bfloat16(), target)
    assert value.dtype == torch.float32
    assert math.isclose(float(value), float(MultiClassDiceLoss()(logits.bfloat16().float(), target)), rel_tol=1e-6)


def test_loss_gradient_flows_to_logits():
    logits = torch.randn(1, 4, 4, 4, requires_grad=True)
    target = torch.randint(0, 4, (1, 4, 4))
    MultiClassDiceLoss()(logits, target).backward()
    assert logits.grad is not None
    assert float(logits.grad.abs().sum()) > 0


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match"):
        MultiClassDiceLoss()(torch.randn(1, 4, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_cross_entropy_term_added():
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    dice_only = MultiClassDiceLoss()(logits, target)
    combined = MultiClassDiceLoss(cross_entropy_weight=0.5)(logits, target)
    assert torch.isclose(combined, dice_only + 0.5 * F.cross_entropy(logits, target))


def test_negative_cross_entropy_weight_rejected():
    with pytest.raises(ValueError, match="cross_entropy_weight"):
        MultiClassDiceLoss(cross_entropy_weight=-1.0)
