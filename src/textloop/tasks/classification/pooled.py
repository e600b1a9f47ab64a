"""A classifier on the mean of the encoder's token vectors (L2-normalised), for few-shot runs.

``AutoModelForSequenceClassification`` classifies a BERT's pooler output (the [CLS] vector through
a dense + tanh layer). Sentence encoders such as all-MiniLM-L6-v2 were trained on the mean of
their token vectors instead, and the few-shot recipe (``training/few_shot.py``) fine-tunes and
classifies exactly that embedding. This module is that model, saved and loaded as an ordinary
safetensors folder (``config.json`` with ``textloop_pooling: mean``): the head a run trained on
is the head every later command (evaluate, predict, export, serve, explain, update) runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

POOLING_KEY = "textloop_pooling"
WEIGHTS = "model.safetensors"


def _body_from_pretrained(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModel

    try:  # the pooler is not used: leave it out where the architecture allows
        return AutoModel.from_pretrained(model_dir, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_pretrained(model_dir)


class MeanPooledClassifier(torch.nn.Module):
    """Encoder body -> masked mean over tokens -> L2 norm -> linear layer; returns ``.logits``."""

    def __init__(self, body: torch.nn.Module, labels: list[str]) -> None:
        super().__init__()
        self.body = body
        config: Any = body.config
        self.config = config
        hidden = int(self.config.hidden_size)
        self.classifier = torch.nn.Linear(hidden, len(labels))
        self.config.num_labels = len(labels)
        self.config.id2label = dict(enumerate(labels))
        self.config.label2id = {lab: i for i, lab in enumerate(labels)}
        setattr(self.config, POOLING_KEY, "mean")

    @classmethod
    def from_body(cls, model_dir: Path, labels: list[str]) -> MeanPooledClassifier:
        """A pretrained encoder from ``model_dir`` with a fresh (zero) head."""
        model = cls(_body_from_pretrained(model_dir), labels)
        torch.nn.init.zeros_(model.classifier.weight)
        torch.nn.init.zeros_(model.classifier.bias)
        return model

    @classmethod
    def load(cls, model_dir: Path) -> MeanPooledClassifier:
        """A model this class saved (``save_pretrained``)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(model_dir)
        if getattr(config, POOLING_KEY, None) != "mean":
            raise ValueError(f"{model_dir}/config.json is not a mean-pooled textloop classifier")
        try:
            body = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            body = AutoModel.from_config(config)
        labels = [config.id2label[i] for i in range(len(config.id2label))]
        model = cls(body, labels)
        model.load_state_dict(load_file(str(model_dir / WEIGHTS)))
        return model.eval()

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """``config.json`` + ``model.safetensors`` (the folder is the caller's temp dir)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(folder)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.body.get_input_embeddings()  # type: ignore[operator,no-any-return]

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit-length sentence embeddings, (B, H): the mean of the unmasked token vectors."""
        return self._embed(input_ids, attention_mask, token_type_ids, False)[0]

    def _embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        output_hidden_states: bool,
    ) -> tuple[torch.Tensor, Any]:
        """The embeddings and, if asked, the body's hidden states (embeddings, then each layer)."""
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            **extra,
        )
        hidden = out[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        summed = (hidden * mask).sum(1)  # (B, H)
        mean = summed / mask.sum(1).clamp(min=1e-9)
        states = out.hidden_states if output_hidden_states else None
        return F.normalize(mean.float(), dim=-1), states

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        **_: Any,
    ) -> Any:
        """``.logits`` (B, C), and ``.hidden_states`` when asked (as a Hugging Face classifier
        gives them: ``select``'s diverse strategy pools the last one)."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        emb, states = self._embed(input_ids, attention_mask, token_type_ids, output_hidden_states)
        logits = self.classifier(emb.to(self.classifier.weight.dtype))  # (B, C)
        return SequenceClassifierOutput(logits=logits, hidden_states=states)
