"""Loading a pretrained Hugging Face causal LM from local files only (a folder or a GGUF file).

Nothing is ever downloaded: ``local_files_only=True`` everywhere, and a path that is not on disk is
an error naming it. Supported families are those whose decoder keeps its blocks in one
``ModuleList`` and whose attention takes the ``is_causal`` switch (see ``hf_adapter.py``).

GGUF (DESIGN.md §3): ``from_pretrained(folder, gguf_file=...)`` dequantises to fp32 but leaves a
quantizer attached, and ``save_pretrained`` refuses such a model; ``clear_quantization_marker``
makes it an ordinary model so it can be cached as safetensors (``thunderdlm convert``).
"""
from __future__ import annotations

import json
from pathlib import Path

from thunderdlm.errors import ModelLoadError, TokenizerError

#: ``config.model_type`` values the adapter is tested with (Llama / Phi / Qwen / GPT-2 families).
SUPPORTED_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "phi3", "phi", "gpt2")
WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "model.safetensors.index.json",
                                 "pytorch_model.bin", "pytorch_model.bin.index.json")


def local_path(path: str | Path) -> Path:
    """``path`` (``~`` expanded) if it is on disk; never looked up on a hub."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model.path '{path}' does not exist (models are never downloaded); "
                             "for SmolLM2 run `thunderdlm convert smollm2` and use its folder")
    return path


def check_folder(folder: Path) -> str:
    """A local model folder with config.json and weights of a supported family; its model_type."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"model folder '{folder}' has no config.json; point model.path at a "
                             "folder written by save_pretrained or `thunderdlm convert`")
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"'{cfg_path}' is not valid JSON ({e})") from None
    if model_type not in SUPPORTED_TYPES:
        raise ModelLoadError(f"'{cfg_path}': architecture {model_type!r} is not supported by the "
                             f"hf adapter; supported: {', '.join(SUPPORTED_TYPES)}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(f"model folder '{folder}' has no weights (none of "
                             f"{', '.join(WEIGHT_FILES)}); convert or copy the model again")
    return model_type


def load_causal_lm(path: str | Path, attn_implementation: str = "sdpa"):
    """A ``transformers`` causal LM in fp32 from a local folder or ``.gguf`` file."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()          # no per-load "Loading weights" bars in our output
    path = local_path(path)
    kwargs = dict(local_files_only=True, dtype=torch.float32, attn_implementation=attn_implementation)
    try:
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelLoadError(f"model.path '{path}' is a file but not a .gguf; give a model "
                                     "folder or a GGUF file")
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
            clear_quantization_marker(model)
        else:
            check_folder(path)
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load a causal LM from '{path}': {str(e).splitlines()[0]}") from None
    if model.config.model_type not in SUPPORTED_TYPES:
        raise ModelLoadError(f"'{path}': architecture {model.config.model_type!r} is not supported; "
                             f"supported: {', '.join(SUPPORTED_TYPES)}")
    return model


def load_config(path: str | Path):
    """The ``transformers`` config of a local folder or ``.gguf`` file (no weights read)."""
    from transformers import AutoConfig

    path = local_path(path)
    try:
        if path.is_file():
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        check_folder(path)
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot read the model config in '{path}': {str(e).splitlines()[0]}") from None


def check_tokenizer(path: str | Path, tokenizer) -> None:
    """The data's tokenizer must be the pretrained model's own: same kind (hf), a vocabulary that
    fits the model's table and, when the model folder has tokenizer files, the same token -> id map."""
    path = Path(path).expanduser()
    how = f"prepare the data with `thunderdlm data prepare ... --tokenizer hf --hf-path {path}`"
    if getattr(tokenizer, "kind", None) != "hf":
        raise TokenizerError(f"the data was tokenized with the '{getattr(tokenizer, 'kind', '?')}' "
                             f"tokenizer but model.path '{path}' is a pretrained model with its own "
                             f"vocabulary; {how}")
    n_table = int(load_config(path).vocab_size)
    if tokenizer.vocab_size > n_table:
        raise TokenizerError(f"the data's tokenizer has {tokenizer.vocab_size} tokens but the model "
                             f"in '{path}' has {n_table} embedding rows: not its tokenizer; {how}")
    if path.is_dir() and (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if own.get_vocab() != tokenizer.backend.get_vocab():
            raise TokenizerError(f"the data's tokenizer differs from the one in '{path}' (another "
                                 f"vocabulary); {how}")


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
        raise ModelLoadError(f"the GGUF model kept {len(packed)} packed layers (e.g. {packed[0]}); "
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
