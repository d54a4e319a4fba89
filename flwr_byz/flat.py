"""Flat parameter vectors: the common currency of rules, attacks and strategies.

A model state (named tensors, e.g. a ``state_dict`` or an ``ArrayRecord``) is
viewed as one vector ``theta`` in R^d: the concatenation, in insertion order, of
its floating-point entries. Integer entries (BatchNorm's ``num_batches_tracked``)
are not part of ``theta``; whoever owns them handles them separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FlatLayout:
    """Names, shapes and dtypes of the floating entries of a model state."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, tensors: Mapping[str, Tensor]) -> FlatLayout:
        """Layout of the floating-point entries of ``tensors``."""
        items = [(k, v) for k, v in tensors.items() if v.is_floating_point()]
        return cls(
            names=tuple(k for k, _ in items),
            shapes=tuple(v.shape for _, v in items),
            dtypes=tuple(v.dtype for _, v in items),
        )

    @property
    def numel(self) -> int:
        """Dimension d of the flat vector."""
        return sum(s.numel() for s in self.shapes)

    @property
    def dtype(self) -> torch.dtype:
        """Widest floating dtype of the entries, at least float32."""
        out = torch.float32
        for dt in self.dtypes:
            out = torch.promote_types(out, dt)
        return out

    def flatten(self, tensors: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> Tensor:
        """Concatenate the layout's entries of ``tensors`` into a ``(d,)`` vector."""
        dtype = dtype or self.dtype
        if not self.names:
            return torch.zeros(0, dtype=dtype)
        return torch.cat([tensors[k].reshape(-1).to(dtype) for k in self.names])

    def unflatten(self, vec: Tensor, cast: bool = True) -> dict[str, Tensor]:
        """Split ``vec`` of shape ``(..., d)`` back into named tensors ``(..., *shape)``.

        With ``cast`` each entry gets its original dtype; otherwise ``vec``'s dtype is kept.
        """
        if vec.shape[-1] != self.numel:
            raise ValueError(f"flat vector has {vec.shape[-1]} entries, the layout needs {self.numel}")
        lead = vec.shape[:-1]
        out: dict[str, Tensor] = {}
        start = 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes):
            part = vec[..., start : start + shape.numel()].reshape(*lead, *shape)
            out[name] = part.to(dtype) if cast else part
            start += shape.numel()
        return out
