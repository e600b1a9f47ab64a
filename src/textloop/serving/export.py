"""Export a run to a self-contained folder: safetensors, or ONNX (BERT-fused, optionally int8).

The folder has a run directory's layout (config.yaml, labels.json, metrics.json, model/), so
``textloop predict``, ``textloop.load_run`` and ``textloop serve`` load it like any run. An export
checks itself before it is kept: the original and the exported model predict the same sample and
the export is refused when they disagree beyond a threshold.

Example:
    >>> from textloop.serving.export import export_run
    >>> report = export_run("runs/reviews", "exports/reviews", format="onnx", quantize="int8")
    >>> report.label_agreement, report.max_prob_diff
    (1.0, 0.0123)
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from textloop.artifacts.rundir import check_replaceable
from textloop.errors import ExportError, RunDirError, TextloopError
from textloop.fileio import make_parent_dirs, swap_dir, temp_dir_prefix
from textloop.models.onnx_backend import ONNX_FILE, OnnxSequenceClassifier
from textloop.serving.agreement import compare_predictions

log = logging.getLogger(__name__)

ExportFormat = Literal["safetensors", "onnx"]
Quantize = Literal["int8"]

# opset 17 has LayerNormalization as one op; onnxruntime's BERT fusions and int8 kernels on
# CPU are built and tested against it, and every onnxruntime >= 1.14 runs it.
DEFAULT_OPSET = 17
RUN_FILES = ("config.yaml", "labels.json", "metrics.json", "env.json", "report.md")
# model types whose graphs onnxruntime's "bert" optimizer knows how to fuse
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert"}
# (min label agreement, max probability difference) when the caller sets none
DEFAULT_THRESHOLDS = {"fp32": (0.99, 1e-3), "int8": (0.95, 0.15)}


@dataclass
class ExportReport:
    """What an export wrote and how closely it agrees with the original model."""

    output: str
    format: str
    quantize: str | None
    n_sample: int
    sample_source: str
    label_agreement: float
    max_prob_diff: float
    mean_prob_diff: float
    min_label_agreement: float
    max_prob_diff_allowed: float
    decisive_agreement: float = 0.0
    near_tie_flips: int = 0
    opset: int | None = None
    fused_ops: dict[str, int] = field(default_factory=dict)
    # int8: the plan kept (int8_plans), how many MatMuls it leaves in fp32, and every plan tried
    int8_plan: str | None = None
    int8_fp32_matmuls: int = 0
    int8_tries: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    source_run: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_run(
    run_dir: str | Path,
    output: str | Path,
    format: ExportFormat = "safetensors",
    quantize: Quantize | None = None,
    opset: int = DEFAULT_OPSET,
    sample: str | None = None,
    sample_size: int = 256,
    min_label_agreement: float | None = None,
    max_prob_diff: float | None = None,
    optimize: bool = True,
    overwrite: bool = False,
) -> ExportReport:
    """Export a finished run and verify the export against the original.

    Args:
        run_dir: a run directory written by ``textloop train``.
        output: folder to create (written to a temporary sibling, renamed at the end).
        format: ``safetensors`` (merged weights for PyTorch) or ``onnx`` (for onnxruntime).
        quantize: ``int8`` for dynamic int8 quantisation of the ONNX graph's matmuls.
        opset: ONNX opset.
        sample: file with texts to verify on (default: the run's test / validation / train data,
            else texts drawn from the tokenizer's vocabulary).
        sample_size: texts to compare.
        min_label_agreement: refuse the export below this share of equal top labels (over
            the texts where the original's top two are not a near tie).
        max_prob_diff: refuse the export above this largest per-label probability difference.
        optimize: fuse the ONNX graph with onnxruntime's transformer optimizer (BERT-like models).
        overwrite: replace an existing ``output``.

    Returns:
        The agreement figures and what was written (also saved as ``export.json``).

    Raises:
        ExportError: bad options, an existing output, a failed export, or disagreement.
    """
    from textloop.runs import load_run

    started = time.perf_counter()
    if quantize is not None and format != "onnx":
        raise ExportError("--quantize int8 needs --format onnx (int8 runs on onnxruntime)")
    if sample_size < 1:
        raise ExportError(f"sample size must be >= 1, got {sample_size}")
    out = Path(output)
    try:
        check_replaceable(out, overwrite, "a textloop run or export")
    except RunDirError as exc:
        raise ExportError(str(exc)) from None
    run = load_run(run_dir)
    if isinstance(run.model, OnnxSequenceClassifier):
        raise ExportError(f"{run_dir} is already an ONNX export; export the original run instead")
    agree_min, diff_max = DEFAULT_THRESHOLDS["int8" if quantize else "fp32"]
    agree_min = agree_min if min_label_agreement is None else min_label_agreement
    diff_max = diff_max if max_prob_diff is None else max_prob_diff

    texts, pairs, sample_source = _sample_inputs(run, sample, sample_size)
    n_labels = len(run.task.state().get("labels", [])) or 1
    reference = run.predict(texts, pairs=pairs, top_k=n_labels)

    make_parent_dirs(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=temp_dir_prefix(out)))
    try:
        for name in RUN_FILES:
            if (run.path / name).is_file():
                shutil.copy2(run.path / name, tmp / name)
        model = _merged(run.model)
        model_dir = tmp / "model"
        run.task.tokenizer.save_pretrained(model_dir)
        report = ExportReport(
            output=str(out),
            format=format,
            quantize=quantize,
            n_sample=len(texts),
            sample_source=sample_source,
            label_agreement=0.0,
            max_prob_diff=0.0,
            mean_prob_diff=0.0,
            min_label_agreement=agree_min,
            max_prob_diff_allowed=diff_max,
            source_run=str(run.path.resolve()),
        )
        if format == "safetensors":
            model.save_pretrained(model_dir, safe_serialization=True)  # type: ignore[operator]
        elif format == "onnx":
            config: Any = model.config  # id2label etc. come with it
            config.save_pretrained(model_dir)
            report.opset = opset
            report.fused_ops = write_onnx(
                model, run.task.tokenizer, model_dir, opset, optimize, tmp / "work"
            )
        else:
            raise ExportError(f"unknown export format {format!r}; choose safetensors or onnx")

        def check() -> bool:
            exported = load_run(tmp).predict(texts, pairs=pairs, top_k=n_labels)
            agreement = compare_predictions(reference, exported)
            report.label_agreement, report.max_prob_diff, report.mean_prob_diff = agreement[:3]
            report.decisive_agreement, report.near_tie_flips = agreement[3:]
            return report.decisive_agreement >= agree_min and report.max_prob_diff <= diff_max

        if quantize == "int8":
            fp32 = tmp / "work" / "fp32.onnx"
            os.replace(model_dir / ONNX_FILE, fp32)
            for plan, keep in int8_plans(fp32):  # int8 everywhere first, then less of it
                quantize_int8(fp32, model_dir / ONNX_FILE, keep)
                passed = check()
                report.int8_plan, report.int8_fp32_matmuls = plan, len(keep)
                report.int8_tries.append(
                    {
                        "plan": plan,
                        "fp32_matmuls": len(keep),
                        "label_agreement": round(report.label_agreement, 4),
                        "decisive_agreement": round(report.decisive_agreement, 4),
                        "max_prob_diff": round(report.max_prob_diff, 4),
                    }
                )
                if passed:
                    break
                log.info("int8 plan %r: max probability difference %.4f; trying the next",
                         plan, report.max_prob_diff)  # fmt: skip
        else:
            passed = check()
        shutil.rmtree(tmp / "work", ignore_errors=True)
        report.seconds = round(time.perf_counter() - started, 2)
        (tmp / "export.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if not passed:
            tried = (
                f" with the last int8 plan of {len(report.int8_tries)} tried "
                f"({report.int8_plan}: {report.int8_fp32_matmuls} MatMuls kept in fp32)"
                if quantize
                else ""
            )
            raise ExportError(
                f"the exported model disagrees with {run_dir} on {len(texts)} texts from "
                f"{sample_source}: label agreement {report.decisive_agreement:.4f} where the "
                f"original is not a near tie (need >= {agree_min}; "
                f"{report.label_agreement:.4f} overall), max probability difference "
                f"{report.max_prob_diff:.4f} (allowed "
                f"<= {diff_max}){tried}; nothing was written — try without --quantize, or loosen "
                "--min-label-agreement / --max-prob-diff if this is expected"
            )
        swap_dir(tmp, out)  # out is new, empty or a run (check_replaceable above)
    except TextloopError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"export of {run_dir} to {format} failed: {exc}") from exc
    log.info(
        "exported %s -> %s (%s%s): label agreement %.4f, max prob diff %.4f",
        run_dir,
        out,
        format,
        f"+{quantize}" if quantize else "",
        report.label_agreement,
        report.max_prob_diff,
    )
    return report


def _merged(model: torch.nn.Module) -> torch.nn.Module:
    """Fold adapter (LoRA) weights into the base weights, so the export is one plain model."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if callable(merge) else model


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in, logits out: the signature the ONNX graph gets."""

    def __init__(self, model: torch.nn.Module, with_token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.with_token_types = with_token_types

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if self.with_token_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits


def write_onnx(
    model: torch.nn.Module,
    tokenizer: Any,
    model_dir: Path,
    opset: int,
    optimize: bool,
    work: Path,
) -> dict[str, int]:
    """Write ``model_dir/model.onnx``: traced and fused for onnxruntime, fp32 (``export_run``
    quantises it).

    Returns:
        Counts of the fused operators (empty when fusion was skipped).
    """

    work.mkdir(parents=True, exist_ok=True)
    config: Any = model.config
    # SDPA traces to a graph onnxruntime cannot fuse into its Attention op; eager attention can be
    set_attn = getattr(model, "set_attn_implementation", None)
    if callable(set_attn):
        set_attn("eager")
    else:
        config._attn_implementation = "eager"
    with_types = getattr(config, "type_vocab_size", 0) > 0 and config.model_type != "distilbert"
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    # the exporter restores the wrapper's training flag; a new Module is in training mode,
    # which would put dropout back into the traced graph
    wrapper = _LogitsOnly(model, with_types).eval()
    model.eval()
    enc = tokenizer(
        ["an example sentence to trace the graph with", "and a second, longer one to pad"],
        padding=True,
        return_tensors="pt",
        return_token_type_ids=True,
    )
    args = tuple(enc[n] for n in names)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic["logits"] = {0: "batch"}
    raw = work / "raw.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # dynamo=False: the TorchScript exporter gives the op pattern onnxruntime's BERT fusion
        # matches, and needs no onnxscript
        torch.onnx.export(
            wrapper,
            args,
            str(raw),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model.eval()
    current, fused = raw, {}
    if optimize and config.model_type in _BERT_LIKE:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
        )
        fused = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
        current = work / "fused.onnx"
        opt.save_model_to_file(str(current))
    elif optimize:
        log.warning("no onnxruntime fusion for model type %r; exporting unfused", config.model_type)
    os.replace(current, model_dir / ONNX_FILE)
    return fused


# activations of a transformer's feed-forward block, fused (onnxruntime) or not (an erf or tanh
# GELU traces to Div/Mul/Add around an Erf or a Tanh)
_ACTIVATIONS = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Relu", "Erf", "Tanh"}
_ELEMENTWISE = {"Add", "Mul", "Div", "Pow"}


def int8_plans(graph: Path) -> list[tuple[str, list[str]]]:
    """The int8 plans ``export_run`` tries in order, each (name, MatMul nodes kept in fp32).

    ``all``: every MatMul, attention and embedding in int8. ``ffn-output``: the feed-forward
    output projections stay fp32: their input, the activation after GELU, carries the outlier
    channels of pre-trained transformers (Bondarenko et al. 2021, "Understanding and
    overcoming the challenges of efficient transformer quantization"), which dynamic
    quantisation's one scale per tensor crushes every other channel under. ``ffn``: both
    feed-forward projections stay fp32 (attention and embeddings stay int8).
    On a 9-category classifier of embedded:e5-small (XLM-R): label agreement 0.980, max
    probability difference 0.67 with everything int8; 0.988 / 0.20 with ffn-output; 0.998 /
    0.07 with ffn (docs/serving.md).
    """
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def after_activation(tensor: str, depth: int = 4) -> bool:
        node = producer.get(tensor)
        if node is None:
            return False
        if node.op_type in _ACTIVATIONS:
            return True
        return (
            depth > 0
            and node.op_type in _ELEMENTWISE
            and any(after_activation(i, depth - 1) for i in node.input)
        )

    def before_activation(tensor: str, depth: int = 3) -> bool:
        for node in consumers.get(tensor, []):
            if node.op_type in _ACTIVATIONS:
                return True
            if (
                depth > 0
                and node.op_type in _ELEMENTWISE
                and before_activation(node.output[0], depth - 1)
            ):
                return True
        return False

    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    ffn_out = [n.name for n in matmuls if after_activation(n.input[0])]
    ffn_in = [n.name for n in matmuls if n.name not in ffn_out and before_activation(n.output[0])]
    plans: list[tuple[str, list[str]]] = [("all", [])]
    if ffn_out:
        plans.append(("ffn-output", ffn_out))
    if ffn_in:
        plans.append(("ffn", ffn_out + ffn_in))
    return plans


def quantize_int8(source: Path, target: Path, keep_fp32: Sequence[str]) -> None:
    """Dynamic int8 quantisation of ``source`` into ``target`` (weights per output channel;
    activations per tensor, at run time), the ``keep_fp32`` nodes left in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the quantizer advises shape-inference pre-processing on the root logger; on a fused
    # graph that pre-processing fails, and DefaultTensorType below stands in for it
    advice = _DropMessage("Please consider to run pre-processing")
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,  # one scale per output column: 0.958 -> 0.980 agreement on e5
            nodes_to_exclude=list(keep_fp32),
            # fused ops (com.microsoft domain) defeat shape inference; their outputs are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().removeFilter(advice)


class _DropMessage(logging.Filter):
    """Drop log records that start with a given text."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _sample_inputs(
    run: Any, sample: str | None, size: int
) -> tuple[list[str], list[str] | None, str]:
    """Texts (and second texts) to compare the models on, and where they came from."""
    from textloop.data.readers import read_table

    d = run.config.data
    pair = bool(run.task.state().get("pair"))
    sources = [sample] if sample else [s for s in (d.test, d.validation, d.train) if s]
    for source in sources:
        try:
            table = read_table(source)
        except (TextloopError, OSError) as exc:
            if sample:
                raise
            log.info(
                "cannot read %s for the export check (%s); trying the next source", source, exc
            )
            continue
        text_col = d.text_column if d.text_column in table.columns else "text"
        pair_col = d.text_pair_column
        rows = [
            r
            for r in table.rows
            if isinstance(r.get(text_col), str)
            and r[text_col].strip()
            and (not pair or isinstance(r.get(pair_col or ""), str))
        ]
        if not rows:
            if sample:
                raise ExportError(
                    f"{source}: no text in column {text_col!r} to verify the export on"
                )
            continue
        rows = random.Random(0).sample(rows, min(size, len(rows)))
        texts = [r[text_col] for r in rows]
        pairs = [r[pair_col] for r in rows] if pair and pair_col else None
        return texts, pairs, source
    # no data reachable (the run moved machines): words from the tokenizer's own vocabulary
    vocab = [
        w for w in run.task.tokenizer.get_vocab() if w.isalpha() and not w.startswith("[")
    ] or ["text"]
    rng = random.Random(0)
    texts = [" ".join(rng.choices(vocab, k=rng.randint(3, 60))) for _ in range(size)]
    pairs = [" ".join(rng.choices(vocab, k=rng.randint(3, 20))) for _ in texts] if pair else None
    return texts, pairs, "random words from the tokenizer vocabulary"
