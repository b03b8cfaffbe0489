"""Named access to a checkpoint's tensors: the base model's keys with or without their prefix ("model."
for a ModernBertForSequenceClassification, "bert." for some BERT checkpoints), shapes checked against the
config, and a missing or misshapen weight reported by name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .modernbert_graph import Linear, Norm
from .safetensors_io import CheckpointFormatError

PREFIXES = ("", "model.", "bert.", "roberta.", "encoder.", "base_model.")


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


@dataclass
class RawLinear:
    """A torch-layout (out, in) weight and its bias, before it is split and transposed for MatMul."""

    weight: np.ndarray
    bias: np.ndarray | None

    def columns(self, start: int, end: int) -> Linear:
        """Output features start:end (e.g. q of a fused Wqkv), as a (in, out) MatMul weight."""
        bias = None if self.bias is None else _f32(self.bias[start:end])
        return Linear(_f32(np.asarray(self.weight[start:end]).T), bias)

    def as_linear(self) -> Linear:
        return self.columns(0, self.weight.shape[0])


class Weights:
    def __init__(self, tensors: dict[str, np.ndarray], where: str, base_key: str):
        self.tensors = tensors
        self.where = where
        prefixes = [p for p in PREFIXES if p + base_key in tensors]
        if not prefixes:
            sample = sorted(tensors)[:5]
            raise CheckpointFormatError(f"{where} has no {base_key!r} (with or without a prefix such as 'model.'): "
                                        f"not weights of this architecture (first tensors: {sample})")
        self.prefix = prefixes[0]

    def has(self, name: str) -> bool:
        return self.prefix + name in self.tensors or name in self.tensors

    def raw(self, name: str) -> np.ndarray:
        for key in (self.prefix + name, name):
            if key in self.tensors:
                return self.tensors[key]
        raise CheckpointFormatError(f"{self.where} is missing the weight {self.prefix + name!r}")

    def base(self, name: str) -> np.ndarray:
        return self.raw(name)

    def shaped(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = self.raw(name)
        if tuple(array.shape) != tuple(shape):
            raise CheckpointFormatError(f"{self.where}: {self.prefix + name!r} has shape {list(array.shape)}, the "
                                        f"config implies {list(shape)}")
        return array

    def linear(self, name: str, shape: tuple[int, int], bias: bool) -> RawLinear:
        weight = self.shaped(f"{name}.weight", shape)
        return RawLinear(weight, self.shaped(f"{name}.bias", (shape[0],)) if bias else None)

    def norm(self, name: str, size: int, bias: bool) -> Norm:
        weight = _f32(self.shaped(f"{name}.weight", (size,)))
        return Norm(weight, _f32(self.shaped(f"{name}.bias", (size,))) if bias else None)
