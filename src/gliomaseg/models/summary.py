"""Text summary of a model: its configuration and parameter counts per submodule."""

from __future__ import annotations

import json

from torch import nn

__all__ = ["count_parameters", "summary"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameter elements (buffers such as running means excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def summary(model: nn.Module, max_depth: int = 2) -> str:
    """Return a table of parameter counts per submodule down to ``max_depth`` levels.

    The first line names the model and its ``config`` (where it has one); the last
    lines give the total and trainable parameter counts.
    """
    name = getattr(model, "model_name", "") or type(model).__name__
    lines = [f"{name} ({type(model).__name__})"]
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        lines.append(f"config: {json.dumps(config, sort_keys=True)}")

    rows: list[tuple[str, str, int]] = []

    def visit(module: nn.Module, prefix: str, depth: int) -> None:
        for child_name, child in module.named_children():
            path = f"{prefix}.{child_name}" if prefix else child_name
            count = count_parameters(child)
            if count:
                rows.append(("  " * depth + path, type(child).__name__, count))
            if depth + 1 < max_depth:
                visit(child, path, depth + 1)

    visit(model, "", 0)
    total = count_parameters(model)
    trainable = count_parameters(model, trainable_only=True)
    name_width = max([len(row[0]) for row in rows] + [len("module")])
    type_width = max([len(row[1]) for row in rows] + [len("type")])
    lines.append(f"{'module':<{name_width}}  {'type':<{type_width}}  {'parameters':>12}")
    for path, kind, count in rows:
        lines.append(f"{path:<{name_width}}  {kind:<{type_width}}  {count:>12,}")
    lines.append(f"{'total':<{name_width}}  {'':<{type_width}}  {total:>12,}")
    lines.append(f"{'trainable':<{name_width}}  {'':<{type_width}}  {trainable:>12,}")
    return "\n".join(lines)
