"""PyTorch vs ONNX on probe inputs, before the manifest is written.

The probes, the comparison and ExportValidationError live in gte_onnx.convert.validation, shared with the
torch-free converter (whose reference is a numpy forward pass); only the PyTorch reference is here.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gte_onnx.convert.validation import (  # noqa: F401  (re-exported for export's callers)
    BATCH_LENGTHS,
    DEFAULT_ATOL,
    DEFAULT_LENGTHS,
    ExportValidationError,
    Probe,
    ProbeSpec,
    make_probes,
    probe_ids,
    validate_graph,
)


def torch_outputs(model, task: str, probe: Probe, token_type: bool) -> np.ndarray:
    import torch

    kwargs: dict[str, Any] = {
        "input_ids": torch.from_numpy(probe.ids),
        "attention_mask": torch.from_numpy(probe.mask),
    }
    if token_type:
        kwargs["token_type_ids"] = torch.zeros_like(kwargs["input_ids"])
    with torch.inference_mode():
        out = model(**kwargs)
    tensor = out.logits if task == "rerank" else out.last_hidden_state
    return tensor.float().numpy()


def validate_export(
    torch_model,
    session,
    task: str,
    input_names: Sequence[str],
    output: str,
    max_length: int,
    vocab_size: int,
    special_ids: Sequence[int],
    cls_id: int,
    sep_id: int,
    pad_id: int,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    atol: float = DEFAULT_ATOL,
) -> dict[str, Any]:
    """Raise ExportValidationError on the first breach; return the max |diff| of every case otherwise."""
    token_type = "token_type_ids" in input_names
    spec = ProbeSpec(max_length, vocab_size, special_ids, cls_id, sep_id, pad_id)
    report = validate_graph(lambda probe: torch_outputs(torch_model, task, probe, token_type), session, task,
                            input_names, output, spec, lengths, atol, "PyTorch")
    return {"reference": "pytorch", **report}
