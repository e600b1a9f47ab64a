"""Run an exported ONNX model behind the same call a Hugging Face model answers.

``OnnxSequenceClassifier`` is a ``torch.nn.Module`` only so that a task's inference code
(``model.eval()``, ``model(**batch).logits``) works on it unchanged; the compute is an
onnxruntime session on the CPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from textloop.errors import ModelError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"


def session_options(threads: int | None = None) -> Any:
    """onnxruntime options for a CPU host that other processes share.

    Intra-op spinning is off: spinning threads burn the cores the HTTP loop and other processes
    need, and on a loaded host a spinning pool is slower, not faster.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads or max(1, len(os.sched_getaffinity(0)))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class OnnxSequenceClassifier(torch.nn.Module):
    """An onnxruntime session that takes token ids and returns ``.logits`` like a HF model.

    Args:
        path: the ``.onnx`` file (inputs ``input_ids``, ``attention_mask`` and optionally
            ``token_type_ids``, int64 (B, T); output ``logits`` (B, C)).
        threads: intra-op threads (default: the cores this process may use).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(
                str(path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"cannot load the ONNX model {path}: {exc}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        # an empty parameter, so code asking `next(model.parameters()).device` gets the CPU
        self.device_anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        self.path = path
        self.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> SimpleNamespace:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask
            if attention_mask is not None
            else torch.ones_like(input_ids),
            "token_type_ids": token_type_ids
            if token_type_ids is not None
            else torch.zeros_like(input_ids),
        }
        feeds = {
            name: given[name].numpy().astype(np.int64, copy=False) for name in self.input_names
        }
        (logits,) = self.session.run(["logits"], feeds)  # (B, C)
        return SimpleNamespace(logits=torch.from_numpy(logits))


def has_onnx_model(model_dir: Path) -> bool:
    """Whether a run's ``model/`` folder holds an exported ONNX model."""
    return (Path(model_dir) / ONNX_FILE).is_file()


def load_onnx_model(model_dir: Path, threads: int | None = None) -> OnnxSequenceClassifier:
    """The ONNX model of an exported run's ``model/`` folder.

    Raises:
        ModelError: no ``model.onnx`` there, or onnxruntime cannot load it.
    """
    path = Path(model_dir) / ONNX_FILE
    if not path.is_file():
        raise ModelError(f"{model_dir} holds no {ONNX_FILE}; export one with `textloop export`")
    return OnnxSequenceClassifier(path, threads)
