"""Checking weights without running them: safetensors headers, pickle refusal, config.json, GPU memory fit.

Nothing here imports or executes model code: safetensors headers are parsed as JSON and their offsets checked
against the file (then the `safetensors` library opens the file as a second opinion); pickle files are refused
unless the policy allows them, and even then never unpickled; a config with `auto_map` (custom code) and any
`.py` file in the model directory are refused.

Parameter count: the sum of the tensors' element counts in the safetensors headers (what the server loads);
only when there are none (pickle weights the policy allows) is it estimated from config.json
(vocab x hidden + 12 x layers x hidden^2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from registry.errors import OnboardingError, PolicyError
from steps.release.records import ConfigSummary, FileEntry, MemoryEstimate
from steps.release.spec import Serving

__all__ = [
    "PICKLE_SUFFIXES",
    "check_weight_files",
    "estimate_memory",
    "read_config",
    "safetensors_params",
    "summarize_config",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
GIB = 1024**3
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
_DTYPE_BITS: Mapping[str, int] = MappingProxyType(
    {
        "BOOL": 8,
        "U8": 8,
        "I8": 8,
        "F8_E4M3": 8,
        "F8_E5M2": 8,
        "F8_E8M0": 8,
        "I16": 16,
        "U16": 16,
        "F16": 16,
        "BF16": 16,
        "I32": 32,
        "U32": 32,
        "F32": 32,
        "I64": 64,
        "U64": 64,
        "F64": 64,
        "C64": 64,
        "F4": 4,
        "F6_E2M3": 6,
        "F6_E3M2": 6,
    }
)
_BYTES_PER_PARAM: Mapping[str, float] = MappingProxyType(
    {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
)
_SHORT: Mapping[str, str] = MappingProxyType({"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"})


def check_weight_files(files: list[FileEntry], *, allow_pickle: bool, pickle_rule: str) -> list[str]:
    """Refuse pickle weights (unless allowed) and code files; returns the .safetensors paths.

    Raises:
        PolicyError: Pickle weights where `pickle_rule` (the policy's allow_pickle) is false.
        OnboardingError: A `.py` file, or no weights at all.
    """
    code = [f.path for f in files if f.path.endswith(".py")]
    if code:
        raise OnboardingError(
            f"model.source: holds Python code ({', '.join(code[:3])}); the platform never runs model code "
            "(no trust_remote_code): remove it and use an architecture transformers ships"
        )
    pickles = [f.path for f in files if f.path.lower().endswith(PICKLE_SUFFIXES)]
    if pickles and not allow_pickle:
        raise PolicyError(
            f"{pickle_rule} is false and model.source holds pickle weights ({', '.join(pickles[:3])}), which can "
            "run code when loaded; convert them to safetensors (save_pretrained(safe_serialization=True))"
        )
    tensors = [f.path for f in files if f.path.endswith(".safetensors")]
    if not tensors and not pickles:
        raise OnboardingError("model.source: no weights (*.safetensors) found; save the model with save_pretrained")
    return tensors


def safetensors_params(path: Path, rel: str) -> int:
    """Check one .safetensors file's header and offsets; returns its element count.

    Raises:
        OnboardingError: The file is truncated, its header corrupt, or the offsets do not match; names `rel`.
    """
    header, data_len = _read_header(path, rel)
    spans: list[tuple[int, int, str]] = []
    numel_total = 0
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise OnboardingError(f"weights file {rel}: __metadata__ must map strings to strings; re-save it")
            continue
        numel, begin, end = _tensor_span(name, info, rel)
        numel_total += numel
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise OnboardingError(
                f"weights file {rel}: tensor {name!r} starts at byte {begin}, expected {position} (a gap or an "
                "overlap): the file is corrupt, re-save it"
            )
        position = end
    if position != data_len:
        what = "truncated" if position > data_len else "has trailing bytes"
        raise OnboardingError(
            f"weights file {rel}: {what}: the tensors need {position} data bytes, the file has {data_len}; "
            "re-download or re-save it"
        )
    _library_check(path, rel)
    return numel_total


def _read_header(path: Path, rel: str) -> tuple[dict[str, Any], int]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise OnboardingError(f"weights file {rel}: truncated ({size} bytes, no header); re-download it")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, _MAX_HEADER_BYTES):
            raise OnboardingError(
                f"weights file {rel}: header length {length} exceeds the file ({size} bytes): truncated or "
                "corrupt, re-download it"
            )
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise OnboardingError(f"weights file {rel}: corrupt header, not JSON ({e}); re-save the file") from e
    if not isinstance(header, dict):
        raise OnboardingError(f"weights file {rel}: corrupt header, not a JSON object; re-save the file")
    return header, size - 8 - length


def _tensor_span(name: str, info: Any, rel: str) -> tuple[int, int, int]:
    """(numel, begin, end) of one header entry, checked against its dtype and shape."""
    where = f"weights file {rel}: tensor {name!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise OnboardingError(f"{where}: expected exactly dtype, shape, data_offsets; re-save the file")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    bits = _DTYPE_BITS.get(dtype) if isinstance(dtype, str) else None
    if bits is None:
        raise OnboardingError(f"{where}: unknown dtype {dtype!r}; re-save the file")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise OnboardingError(f"{where}: shape {shape!r} is not a list of non-negative integers; re-save the file")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise OnboardingError(f"{where}: data_offsets {offsets!r} are not two non-negative integers; re-save it")
    numel = math.prod(shape)
    begin, end = offsets
    if end < begin or (end - begin) * 8 != numel * bits:
        raise OnboardingError(
            f"{where}: data_offsets {offsets} span {end - begin} bytes but {dtype} x {shape} needs "
            f"{numel * bits / 8:g}: the header is corrupt, re-save the file"
        )
    return numel, begin, end


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _library_check(path: Path, rel: str) -> None:
    """Let the safetensors library open the file too (it validates the header and buffer on its own)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            fh.keys()
    except Exception as e:  # SafetensorError and friends; the library does not export a stable base
        raise OnboardingError(f"weights file {rel}: the safetensors library refuses it ({e}); re-save it") from e


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json of a weights model, refusing custom code (`auto_map`).

    Raises:
        OnboardingError: config.json is missing, not JSON, not an object, or declares auto_map.
    """
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise OnboardingError(
            f"model.source: config.json is missing in {model_dir}; save the model with save_pretrained"
        ) from e
    except json.JSONDecodeError as e:
        raise OnboardingError(
            f"model.source: config.json is malformed (line {e.lineno}, column {e.colno}: {e.msg}); fix the JSON"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise OnboardingError(f"model.source: config.json is unreadable ({e}); fix the file") from e
    if not isinstance(config, dict):
        raise OnboardingError("model.source: config.json must be a JSON object; save the model with save_pretrained")
    for name in ("config.json", "tokenizer_config.json"):
        other = config if name == "config.json" else _json_or_empty(model_dir / name)
        if "auto_map" in other:
            raise OnboardingError(
                f"model.source: {name} declares auto_map (custom model code); the platform never runs model code "
                "(no trust_remote_code): remove auto_map and use an architecture transformers ships"
            )
    return config


def _json_or_empty(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _lookup(config: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` in config.json, or in its `text_config` (multimodal models)."""
    for scope in (config, config.get("text_config") or {}):
        if isinstance(scope, dict):
            for key in keys:
                if scope.get(key) is not None:
                    return scope[key]
    return None


def _positive(config: dict[str, Any], *keys: str) -> int:
    value = _lookup(config, *keys)
    if not _is_count(value) or value == 0:
        raise OnboardingError(
            f"model.source: config.json needs a positive integer {' or '.join(keys)} (got {value!r}) to size the "
            "model; fix config.json"
        )
    return int(value)


def summarize_config(config: dict[str, Any], header_params: int) -> ConfigSummary:
    """The architecture summary; `header_params` (0 when there are no safetensors) wins over the config estimate."""
    layers = _positive(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _positive(config, "num_attention_heads", "n_head")
    hidden = _positive(config, "hidden_size", "n_embd", "d_model")
    kv_heads = _lookup(config, "num_key_value_heads")
    head_dim = _lookup(config, "head_dim")
    context = _lookup(config, "max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")
    archs = config.get("architectures")
    params, source = header_params, "safetensors"
    if header_params == 0:
        vocab = _lookup(config, "vocab_size")
        params, source = (vocab if _is_count(vocab) else 0) * hidden + 12 * layers * hidden * hidden, "config"
    dtype = _lookup(config, "torch_dtype", "dtype")
    return ConfigSummary(
        architecture=str(archs[0]) if isinstance(archs, list) and archs else None,
        model_type=str(config["model_type"]) if config.get("model_type") else None,
        params=params,
        params_source=source,
        context_length=context if _is_count(context) and context > 0 else None,
        dtype=str(dtype) if dtype is not None else None,
        layers=layers,
        attention_heads=heads,
        kv_heads=kv_heads if _is_count(kv_heads) and kv_heads > 0 else heads,
        head_dim=head_dim if _is_count(head_dim) and head_dim > 0 else max(1, hidden // heads),
        hidden_size=hidden,
    )


def estimate_memory(summary: ConfigSummary, serving: Serving) -> MemoryEstimate:
    """Estimate the GPU memory of serving the model (see `MemoryEstimate`); `fits` says whether it fits.

    Raises:
        OnboardingError: max_context exceeds the model's context length, or neither is known.
    """
    context = _serving_context(summary, serving)
    weight_format = serving.quantization if serving.quantization != "none" else serving.dtype
    per_param = _BYTES_PER_PARAM[weight_format]
    kv_bytes = int(_BYTES_PER_PARAM[serving.dtype])
    weights = math.ceil(summary.params * per_param)
    kv = 2 * summary.layers * summary.kv_heads * summary.head_dim * kv_bytes * context * serving.max_batch
    overhead = GIB + math.ceil(0.1 * (weights + kv))
    total = weights + kv + overhead
    gpu = serving.target_gpu
    usable = int(gpu.memory_gib * serving.gpu_memory_utilization * GIB)
    fits = total <= usable
    fmt, kv_fmt = _SHORT.get(weight_format, weight_format), _SHORT[serving.dtype]
    arithmetic = (
        f"weights {weights / GIB:.2f} GiB ({summary.params:.2e} params x {per_param:g} B {fmt}) + KV cache "
        f"{kv / GIB:.2f} GiB (2 x {summary.layers} layers x {summary.kv_heads} kv heads x {summary.head_dim} head dim "
        f"x {kv_bytes} B {kv_fmt} x {context} tokens x {serving.max_batch} seqs) + overhead {overhead / GIB:.2f} GiB "
        f"(1 GiB + 10%) = {total / GIB:.2f} GiB {'<=' if fits else '>'} {usable / GIB:.2f} GiB usable of "
        f"{gpu.name} {gpu.memory_gib:g} GiB x {serving.gpu_memory_utilization:g}"
    )
    return MemoryEstimate(
        params=summary.params, weight_format=weight_format, bytes_per_param=per_param, weights_bytes=weights,
        kv_dtype=serving.dtype, kv_bytes_per_value=kv_bytes, layers=summary.layers, kv_heads=summary.kv_heads,
        head_dim=summary.head_dim, max_context=context, max_batch=serving.max_batch, kv_cache_bytes=kv,
        overhead_bytes=overhead, total_bytes=total, gpu_name=gpu.name, gpu_memory_gib=gpu.memory_gib,
        gpu_memory_utilization=serving.gpu_memory_utilization, usable_bytes=usable, fits=fits, arithmetic=arithmetic,
    )  # fmt: skip


def _serving_context(summary: ConfigSummary, serving: Serving) -> int:
    if serving.max_context is None:
        if summary.context_length is None:
            raise OnboardingError(
                "model.serving.max_context: config.json states no context length (max_position_embeddings, "
                "n_positions, ...); set model.serving.max_context"
            )
        return summary.context_length
    if summary.context_length is not None and serving.max_context > summary.context_length:
        raise OnboardingError(
            f"model.serving.max_context {serving.max_context} exceeds the model's context length "
            f"{summary.context_length} (config.json); lower it or leave it unset"
        )
    return serving.max_context
