"""Lightning module: Dice-loss training steps and region Dice on validation patches."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from gliomaseg.data.labels import REGION_CLASSES, REGIONS
from gliomaseg.training.loss import MultiClassDiceLoss

# Short names of the regions in the progress display.
REGION_ABBREVIATIONS = {"whole_tumor": "wt", "tumor_core": "tc", "enhancing_tumor": "et"}


def region_dice(counts: torch.Tensor) -> dict[str, float]:
    """Return Dice per region from pooled counts.

    Args:
        counts: float (3, 3) tensor, one row per region in REGIONS order, columns
            (intersection, predicted voxels, reference voxels).

    Returns:
        {region: 2 * intersection / (predicted + reference)}; 1.0 where both are empty
        (the BraTS convention for an absent region that is correctly not predicted).
    """
    result = {}
    for region, (intersection, predicted, reference) in zip(REGIONS, counts.double().tolist()):
        denominator = predicted + reference
        result[region] = 1.0 if denominator == 0 else 2.0 * intersection / denominator
    return result


def region_counts(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Count (intersection, predicted, reference) voxels per region for class maps of equal shape."""
    rows = []
    for region in REGIONS:
        members = torch.tensor(REGION_CLASSES[region], device=prediction.device)
        predicted = torch.isin(prediction, members)
        reference = torch.isin(target, members)
        rows.append(torch.stack([(predicted & reference).sum(), predicted.sum(), reference.sum()]))
    return torch.stack(rows).double()


class SegmentationModule(L.LightningModule):
    """Train a segmentation network on patches with the multi-class soft Dice loss.

    Args:
        model: a network returning raw logits (N, 4, [D,] H, W); `spatial_dims` 2 networks get
            (N, C, H, W) inputs (the depth-1 axis of the patches is dropped).
        config: the resolved training configuration.
        channels_last: convert the network and inputs to the channels-last memory format.
        optimizer_state: an Adam state dict to continue from (resume).

    Batches are dicts with "image" float (N, C, D, H, W) and "label" int64 (N, D, H, W).
    """

    def __init__(self, model: nn.Module, config: Mapping[str, Any], channels_last: bool = False, optimizer_state: dict | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.two_d = getattr(model, "spatial_dims", 3) == 2
        self.channels_last = channels_last
        self.loss = MultiClassDiceLoss(
            include_background=bool(config["loss"]["include_background"]),
            cross_entropy_weight=float(config["loss"].get("cross_entropy_weight", 0.0)),
        )
        self._optimizer_state = optimizer_state
        if channels_last:
            self.model.to(memory_format=self._memory_format)
        self.train_loss_sum = 0.0
        self.train_steps = 0
        self.validation_result: dict[str, float] | None = None
        self._validation_counts: torch.Tensor | None = None
        self._validation_loss = torch.zeros(2, dtype=torch.float64)

    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.two_d else torch.channels_last_3d

    def _inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = batch["image"], batch["label"]
        if self.two_d:
            image, label = image[:, :, 0], label[:, 0]
        if self.channels_last:
            image = image.contiguous(memory_format=self._memory_format)
        return image, label

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        image, label = self._inputs(batch)
        # NOTE: under DDP the Dice sums run over this process's share of the batch only, so the
        # loss differs from the single-process batch-global loss of the same global batch.
        loss = self.loss(self.model(image), label)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at step {self.global_step}; lower optimizer.lr or use training.precision=32-true")
        self.train_loss_sum += value
        self.train_steps += 1
        self.log("loss", value, prog_bar=True, on_step=True, on_epoch=False, batch_size=image.shape[0])
        return loss

    def on_train_epoch_start(self) -> None:
        self.train_loss_sum = 0.0
        self.train_steps = 0

    def on_validation_epoch_start(self) -> None:
        self._validation_counts = torch.zeros(len(REGIONS), 3, dtype=torch.float64, device=self.device)
        self._validation_loss = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_index: int) -> None:
        image, label = self._inputs(batch)
        logits = self.model(image)
        loss = self.loss(logits, label)
        self._validation_loss += torch.stack([loss.detach().double() * image.shape[0], torch.tensor(image.shape[0], dtype=torch.float64, device=self.device)])
        self._validation_counts += region_counts(logits.argmax(dim=1), label)

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self._validation_counts, reduce_op="sum")
        loss_sum, samples = self.trainer.strategy.reduce(self._validation_loss, reduce_op="sum").tolist()
        dice = region_dice(counts)
        result = {"val_loss": loss_sum / max(samples, 1.0)}
        result.update({f"val_dice_{region}": value for region, value in dice.items()})
        result["val_dice_mean"] = sum(dice.values()) / len(dice)
        self.validation_result = result
        if not self.trainer.sanity_checking:
            for region, value in dice.items():
                self.log(f"dice_{REGION_ABBREVIATIONS[region]}", value, prog_bar=True, rank_zero_only=True)
            self.log("val_loss", result["val_loss"], prog_bar=True, rank_zero_only=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer_config = self.config["optimizer"]
        optimizer = torch.optim.Adam(self.model.parameters(), lr=float(optimizer_config["lr"]), weight_decay=float(optimizer_config["weight_decay"]))
        if self._optimizer_state is not None:
            optimizer.load_state_dict(self._optimizer_state)
            self._optimizer_state = None
        return optimizer
