"""``textloop export``, ``textloop registry ...`` and ``textloop serve``: thin shells over serving."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from textloop.errors import ConfigError

DEFAULT_REGISTRY = "registry"
_MIN_KEY_CHARS = 16
_MAX_EXPLAIN_STEPS = (
    1000  # numpy's leggauss (Captum's Gauss-Legendre) is O(steps^3) time, O(steps^2) memory
)


def add_parser(sub: Any) -> list[str]:
    """Register export, registry and serve on the ``textloop`` subparsers."""
    p = sub.add_parser("export", help="export a run for serving: safetensors, ONNX, int8")
    p.add_argument("run", help="run directory")
    p.add_argument("--output", required=True, help="folder to create")
    p.add_argument(
        "--format",
        choices=["safetensors", "onnx"],
        default="safetensors",
        help="safetensors: the PyTorch model as trained; onnx: an onnxruntime graph (default "
        "safetensors)",
    )
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="onnx: dynamic int8 quantisation of the linear layers (default none)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-optimize", action="store_true", help="skip onnxruntime's BERT fusion")
    p.add_argument("--sample", help="file with texts to verify on (default: the run's data)")
    p.add_argument("--sample-size", type=int, default=256, help="texts to verify on")
    p.add_argument("--min-label-agreement", type=float, help="refuse below this share")
    p.add_argument("--max-prob-diff", type=float, help="refuse above this probability gap")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")

    r = sub.add_parser("registry", help="register, promote and roll back model versions")
    rsub = r.add_subparsers(dest="registry_command", required=True, help="registry action")

    def reg(name: str, help: str) -> argparse.ArgumentParser:
        q = rsub.add_parser(name, help=help)
        q.add_argument(
            "--registry",
            default=os.environ.get("TEXTLOOP_REGISTRY", DEFAULT_REGISTRY),
            help="registry directory (default $TEXTLOOP_REGISTRY or ./registry)",
        )
        q.add_argument("--json", action="store_true", help="print JSON")
        return q

    q = reg("add", "register a run or export folder as a new version (stage staging)")
    q.add_argument("source", help="run or export folder")
    q.add_argument("--name", required=True, help="model name")
    q.add_argument("--reason", default="", help="why (kept in the audit log)")
    q.add_argument("--actor", help="who (default: the OS user)")
    q = reg("promote", "move a version to production (or --stage staging|archived)")
    q.add_argument("name", help="model name")
    q.add_argument("version", type=int, help="version number")
    q.add_argument(
        "--stage",
        choices=["production", "staging", "archived"],
        default="production",
        help="stage to move the version to (default production)",
    )
    q.add_argument("--reason", default="", help="why (kept in the audit log)")
    q.add_argument("--actor", help="who (default: the OS user)")
    q = reg("rollback", "put back the previous production version")
    q.add_argument("name", help="model name")
    q.add_argument("--reason", default="", help="why (kept in the audit log)")
    q.add_argument("--actor", help="who (default: the OS user)")
    q = reg("list", "list models and versions")
    q.add_argument("name", nargs="?", help="one model (default: all)")
    q = reg("show", "one model's versions, metrics and audit log")
    q.add_argument("name", help="model name")
    q = reg("verify", "re-hash a version's files against the registry")
    q.add_argument("name", help="model name")
    q.add_argument("version", type=int, nargs="?", help="default: the production version")

    s = sub.add_parser("serve", help="serve a model over HTTP (FastAPI + uvicorn)")
    s.add_argument("run", nargs="?", help="run or export folder (or use --registry and --name)")
    s.add_argument("--registry", help="registry directory")
    s.add_argument("--name", help="registry model name (serves its production version)")
    s.add_argument("--version", type=int, help="pin a version (no hot swap)")
    s.add_argument("--host", default="127.0.0.1", help="interface (default loopback only)")
    s.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    s.add_argument("--api-key-file", help="file holding the key write endpoints require")
    s.add_argument("--max-batch-size", type=int, default=32, help="texts per batch; 1 = off")
    s.add_argument("--max-wait-ms", type=float, default=2.0, help="wait to fill a batch")
    s.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="PyTorch predictions and embeddings: fp32 (default), bf16 autocast, or auto (bf16 "
        "where the CPU has native bf16: amx_bf16 or avx512_bf16); ONNX exports ignore it",
    )
    s.add_argument("--max-texts", type=int, default=64, help="texts per request")
    s.add_argument("--max-chars", type=int, default=20_000, help="characters per text")
    s.add_argument("--max-body-bytes", type=int, default=1_048_576, help="request body size")
    s.add_argument("--poll-seconds", type=float, default=2.0, help="registry check interval")
    s.add_argument("--explain-max-texts", type=int, default=16, help="texts per /v1/explain")
    s.add_argument(
        "--explain-max-steps", type=int, default=200, help="integration steps per explanation"
    )
    s.add_argument(
        "--explain-max-token-steps",
        type=int,
        default=200_000,
        help="steps x tokens of all texts of one /v1/explain request",
    )
    s.add_argument("--explain-timeout-s", type=float, default=60.0, help="/v1/explain time limit")
    s.add_argument(
        "--explain-auth",
        choices=("auto", "key", "open"),
        default="auto",
        help="/v1/explain needs the API key: auto (when one is set), key (always), open (never)",
    )
    s.add_argument("--threads", type=int, help="PyTorch intra-op threads (default: all cores)")
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.add_argument(
        "--feedback-store",
        help="SQLite file logging predictions and taking /v1/feedback "
        "(default with --registry: <registry>/feedback.sqlite)",
    )
    s.add_argument("--no-feedback", action="store_true", help="no traffic log, no /v1/feedback")
    s.add_argument("--log-text", action="store_true", help="keep texts in the log (input drift)")
    return ["export", "registry", "serve"]


def run(args: argparse.Namespace) -> int:
    """Dispatch to the command ``args.command`` names."""
    return {"export": _export, "registry": _registry, "serve": _serve}[args.command](args)


def _export(args: argparse.Namespace) -> int:
    from textloop.serving.export import export_run

    report = export_run(
        args.run,
        args.output,
        format=args.format,
        quantize=None if args.quantize == "none" else args.quantize,
        opset=args.opset,
        sample=args.sample,
        sample_size=args.sample_size,
        min_label_agreement=args.min_label_agreement,
        max_prob_diff=args.max_prob_diff,
        optimize=not args.no_optimize,
        overwrite=args.overwrite,
    )
    kind = args.format + (f" + {report.quantize}" if report.quantize else "")
    print(f"exported {args.run} -> {args.output} ({kind}) in {report.seconds:.1f} s")
    if report.fused_ops:
        print("fused: " + ", ".join(f"{k} x{v}" for k, v in report.fused_ops.items()))
    print(
        f"check on {report.n_sample} texts ({report.sample_source}): label agreement "
        f"{report.label_agreement:.4f}, max probability difference {report.max_prob_diff:.5f}"
    )
    if report.int8_plan and report.int8_plan != "all":
        refused = ", ".join(
            f"{t['plan']} (max difference {t['max_prob_diff']})" for t in report.int8_tries[:-1]
        )
        print(
            f"int8 plan {report.int8_plan}: {report.int8_fp32_matmuls} MatMuls kept in fp32 "
            f"(refused: {refused}; see export.json)"
        )
    return 0


def _registry(args: argparse.Namespace) -> int:
    from textloop.artifacts.registry import Registry

    reg = Registry(args.registry)
    cmd = args.registry_command
    if cmd in ("add", "promote", "rollback"):
        if cmd == "add":
            mv = reg.add(args.source, args.name, actor=args.actor, reason=args.reason)
        elif cmd == "promote":
            mv = reg.promote(args.name, args.version, args.stage, args.actor, args.reason)
        else:
            mv = reg.rollback(args.name, actor=args.actor, reason=args.reason)
        if args.json:
            print(json.dumps(mv.summary(), indent=2))
        else:
            print(f"{mv.name} version {mv.version}: {mv.stage} ({mv.format})")
        return 0
    if cmd == "verify":
        if args.version is None:
            version = reg.production_version(args.name)
            if version is None:
                raise ConfigError(f"{args.name!r} has no production version; give VERSION")
        else:
            version = args.version
        mv = reg.verify(args.name, version)
        print(f"{mv.name} version {mv.version}: all {len(mv.files)} files match their sha256")
        return 0
    versions = reg.versions(args.name)
    if cmd == "show" and not versions:
        reg.get(args.name, 0)  # raises the "no model named ..." error listing known names
    if args.json:
        out: dict[str, Any] = {"versions": [v.summary() for v in versions]}
        if cmd == "show":
            out["audit"] = reg.audit_log(args.name)
        print(json.dumps(out, indent=2))
        return 0
    if not versions:
        print(f"registry {reg.root} is empty; add a run with `textloop registry add RUN --name N`")
        return 0
    print(f"{'name':<20} {'version':>7}  {'stage':<10} {'format':<12} {'created (UTC)':<25} metric")
    for v in versions:
        test = v.metrics.get("test") or v.metrics.get("validation") or {}
        metric = f"macro-F1 {test['macro_f1']:.4f}" if "macro_f1" in test else ""
        print(
            f"{v.name:<20} {v.version:>7}  {v.stage:<10} {v.format:<12} {v.created_at:<25} {metric}"
        )
    if cmd == "show":
        print("\nsource of each version: config hash, from")
        for v in versions:
            print(f"  v{v.version}: {v.config_hash[:12]}  {v.source}")
        print("\naudit log:")
        for e in reg.audit_log(args.name):
            move = f"{e['from_stage'] or '-'} -> {e['to_stage']}"
            why = f"  ({e['reason']})" if e["reason"] else ""
            print(f"  {e['at']}  {e['actor']:<12} {e['action']:<14} v{e['version']}  {move}{why}")
    return 0


def read_api_key(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--api-key-file: {p} not found")
    key = p.read_text(encoding="utf-8").strip()
    if len(key) < _MIN_KEY_CHARS or any(c.isspace() for c in key):
        raise ConfigError(
            f"--api-key-file: {p} must hold one key of at least {_MIN_KEY_CHARS} characters, "
            "no spaces; make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return key


def _serve(args: argparse.Namespace) -> int:
    from textloop.artifacts.registry import Registry
    from textloop.serving.app import serve
    from textloop.serving.sources import RegistrySource, RunDirSource, ServeOptions

    source: RegistrySource | RunDirSource
    if args.run and (args.registry or args.name):
        raise ConfigError("give a run folder or --registry with --name, not both")
    if args.run:
        source = RunDirSource(Path(args.run))
    elif args.registry and args.name:
        if not Path(args.registry).is_dir():
            raise ConfigError(f"--registry: {args.registry} is not a directory")
        source = RegistrySource(Registry(args.registry), args.name, args.version)
    else:
        raise ConfigError("serve what? give a run folder, or --registry DIR --name NAME")
    for flag in ("max_batch_size", "max_texts", "max_chars", "max_body_bytes", "port"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.max_wait_ms < 0 or args.poll_seconds < 0:
        raise ConfigError("--max-wait-ms and --poll-seconds must be >= 0")
    for flag in ("explain_max_texts", "explain_max_token_steps"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not 2 <= args.explain_max_steps <= _MAX_EXPLAIN_STEPS:
        raise ConfigError(
            f"--explain-max-steps must be 2 ... {_MAX_EXPLAIN_STEPS}, got {args.explain_max_steps} "
            "(Gauss-Legendre nodes cost steps^3 CPU before any model pass: ~8 s at 1000 steps)"
        )
    if args.explain_timeout_s <= 0:
        raise ConfigError(f"--explain-timeout-s must be > 0, got {args.explain_timeout_s}")
    options = ServeOptions(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes,
        poll_seconds=args.poll_seconds if args.version is None else 0.0,
        api_key=read_api_key(args.api_key_file) if args.api_key_file else None,
        explain_max_texts=args.explain_max_texts,
        explain_max_steps=args.explain_max_steps,
        explain_max_token_steps=args.explain_max_token_steps,
        explain_timeout_s=args.explain_timeout_s,
        explain_auth=args.explain_auth,
        precision=args.precision,
    )
    from textloop.artifacts.feedback import FeedbackStore

    store_path = args.feedback_store or args.registry
    store = (
        FeedbackStore(store_path, keep_text=args.log_text)
        if store_path and not args.no_feedback
        else None
    )
    serve(
        source,
        host=args.host,
        port=args.port,
        options=options,
        threads=args.threads,
        access_log=args.access_log,
        store=store,
    )
    return 0
