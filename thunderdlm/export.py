"""``thunderdlm export RUN --out DIR``: any run as a folder that loads with plain ``transformers``.

::

    DIR/config.json                   ThunderDLMConfig (model_type "thunderdlm") with auto_map:
                                      AutoConfig / AutoModel / AutoModelForMaskedLM, trust_remote_code
    DIR/configuration_thunderdlm.py   the modelling code, copied from thunderdlm/hf_export/: it imports
    DIR/modeling_thunderdlm.py        only torch + transformers and mirrors the thunderdlm network
    DIR/model.safetensors             the whole network (keys "network.<thunderdlm key>"): RUN's EMA
                                      weights when it kept them (as sampling uses); LoRA adapters
                                      unmerged, as trained (config.lora lists them)
    DIR/tokenizer.json, tokenizer_config.json ...   AutoTokenizer.from_pretrained(DIR): thunderdlm's
                                      tokenizer plus the process's row (mask_token / <|bos|>)
    DIR/generation_config.json        the diffusion sampler's settings (steps, block_length,
                                      remasking, threshold, mask_token_id, process, schedule...)
    DIR/README.md                     the model card (data, config, measured figures, how to sample)
    DIR/thunderdlm_export.json        what thunderdlm.load(DIR) rebuilds the model from: the run's
                                      config (model.path = lm), the source run, checkpoint and step
    DIR/tokenizer/, DIR/data.json     thunderdlm's own tokenizer folder and the run's data record
    DIR/lm/                           hf-backbone runs: the causal LM the network is built on (for
                                      LoRA runs its unmerged base, with the run's trained non-LoRA
                                      weights and the mask row), plus the tokenizer
    DIR/lora/                         hf-backbone LoRA runs: the peft adapter;
                                      PeftModel.from_pretrained(AutoModelForCausalLM
                                      .from_pretrained(DIR/lm), DIR/lora) is the run's causal LM

LoRA stays unmerged: peft's ``...q_proj.base_layer.weight`` W and adapters A (r, in), B (out, r) are
exported as they are and the modelling code computes W·x + (alpha / r)·B·(A·x) with peft's ops, so
the logits are the run's exactly (merging into W + (alpha / r)·B·A rounds differently: 8e-5 on
SmolLM2's logits, measured). Every export is checked before it is renamed into place: the copied
modelling code, loaded with the exported weights, must give thunderdlm's outputs on a probe batch
to 1e-5, and the config, weights and tokenizer ids must agree. Everything is written into a hidden
sibling folder and renamed to DIR at the end (a failed export leaves no half-written DIR;
``--force`` replaces an old one only on success).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from thunderdlm import checkpoint as ck
from thunderdlm.errors import CheckpointError
from thunderdlm.hf_export import MODELING_FILES, card, hf_config, tokenizer as hf_tok
from thunderdlm.loading import EXPORT_INFO, LoadedRun, load_run
from thunderdlm.portable import LM_DIR
from thunderdlm.models.hf_adapter import HFDenoiser
from thunderdlm.run_config import RunConfig

LORA_DIR = "lora"
LM_NOTE = """# The causal LM under a thunderdlm diffusion model

This folder is the pretrained body the diffusion model is built on (with the mask row added to its
vocabulary and, for a LoRA run, the base weights the adapter in `../lora` applies to). It was
trained as a bidirectional denoiser (`is_causal=False`), not as a left-to-right LM: its
`generate()` would decode left to right with a causal mask it was not trained for. The diffusion
model is the parent folder: `AutoModel.from_pretrained("..", trust_remote_code=True)` (its
`generate()` runs the diffusion sampler), or `thunderdlm sample ..`.
"""
TOLERANCE = 1e-5


@dataclass
class ExportResult:
    """What ``export_run`` wrote."""

    out: Path                      # the export folder
    source_checkpoint: Path        # the checkpoint of RUN that was exported
    step: int                      # its training step
    weights: str                   # "ema" or "model": which file of it
    lora: bool                     # a LoRA run (its adapters exported unmerged, and to lora/)
    max_abs_diff: float            # the exported model's largest deviation on the probe batch
    lora_dir: Path | None = None   # the peft adapter (LoRA runs)


def export_run(run: str | Path, out: str | Path, checkpoint: str | None = None,
               force: bool = False) -> ExportResult:
    """Export RUN (any run folder, or an export) into ``out``; see the module docstring."""
    run_dir, out = Path(run), Path(out)
    _check_out(run_dir, out, force)
    lm = load_run(run_dir, checkpoint=checkpoint, device="cpu")          # EMA weights when kept
    cfg = lm.cfg
    weights = lm.weights_file.removesuffix(".safetensors")
    hf = find_hf_backbone(lm.model, run_dir) if cfg.model.name == "hf" else None
    lora = hf is not None and cfg.model.lora_rank > 0
    source = lm.source_info()
    with ck.atomic_folder(out) as tmp:
        if hf is not None:
            _write_lm(tmp, hf[1], lm, lora=lora)
        state = lm.model.state_dict()
        config = hf_config.build(lm, hf[1] if hf else None)
        _write_transformers(tmp, lm, state, config)
        gen = hf_config.generation_settings(lm)
        ck.atomic_write_text(tmp / "generation_config.json", json.dumps(gen, indent=1))
        _write_thunderdlm(tmp, lm, _exported_config(cfg), source, weights, lora)
        ck.atomic_write_text(tmp / "README.md", card.model_card(lm, config, gen, source, run_dir, lora))
        diff = _verify(tmp, lm, config)
    return ExportResult(out, lm.checkpoint, int(source.get("step", 0)), weights, lora, diff,
                        out / LORA_DIR if lora else None)


# ---- finding the adapter ---------------------------------------------------------------------------

def find_hf_backbone(net: nn.Module, run_dir: Path) -> tuple[str, HFDenoiser]:
    """The one ``HFDenoiser`` inside the network and its state-dict prefix ('' or 'backbone.')."""
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, HFDenoiser)]
    if len(found) != 1:
        raise CheckpointError(f"the network of run '{run_dir}' holds {len(found)} hf adapters "
                              "(HFDenoiser); export needs exactly one")
    name, module = found[0]
    return (name + "." if name else ""), module


# ---- writing ---------------------------------------------------------------------------------------

def _check_out(run_dir: Path, out: Path, force: bool) -> None:
    src, dst = run_dir.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise CheckpointError(f"--out '{out}' is the run folder '{run_dir}' or contains it; "
                              "export into another folder")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out '{out}' is a file; give a folder to write the export into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CheckpointError(f"--out '{out}' already exists and is not empty; choose another folder "
                              "or pass --force to replace it")


def _exported_config(cfg: RunConfig) -> RunConfig:
    """The run config thunderdlm.load(DIR) builds: an hf backbone read from DIR/lm (a path relative
    to the export folder, so the folder can move; LoRA is applied on it as in training)."""
    data = cfg.to_dict()
    if data["model"]["name"] == "hf":
        data["model"]["path"] = LM_DIR
    return RunConfig.from_data(data)


def _write_lm(folder: Path, backbone: HFDenoiser, lm: LoadedRun, lora: bool) -> None:
    """DIR/lm: the causal LM the network builds on (its unmerged base for LoRA runs, bidirectional
    config) + the tokenizer with the mask token; DIR/lora: the peft adapter."""
    causal = backbone.causal_lm
    causal.config.is_causal = False           # trained bidirectional (the adapter sets it too)
    base = {k.replace(".base_layer.", "."): v for k, v in causal.state_dict().items() if "lora_" not in k}
    causal.save_pretrained(str(folder / LM_DIR), state_dict=base, safe_serialization=True)
    if lm.tokenizer.kind == "hf":
        role = hf_tok.extra_token_role(lm.process.name, lm.process.model_vocab_size - lm.tokenizer.vocab_size)
        hf_tok.save(hf_tok.to_transformers(lm.tokenizer, role, lm.context), folder / LM_DIR)
    ck.atomic_write_text(folder / LM_DIR / "README.md", LM_NOTE)
    if lora:
        backbone.lm.save_pretrained(str(folder / LORA_DIR))
        adapter_cfg = folder / LORA_DIR / "adapter_config.json"
        data = json.loads(adapter_cfg.read_text())
        data["base_model_name_or_path"] = f"../{LM_DIR}"      # relative: the folder may move
        ck.atomic_write_text(adapter_cfg, json.dumps(data, indent=2))


def _write_transformers(folder: Path, lm: LoadedRun, state: dict, config) -> None:
    """config.json (auto_map), the modelling code, model.safetensors and the tokenizer."""
    config.save_pretrained(str(folder))
    for path in MODELING_FILES:
        shutil.copy2(path, folder / path.name)
    ck.save_tensors(folder / "model.safetensors", {f"network.{k}": v for k, v in state.items()},
                    metadata={"format": "pt"})
    role = hf_tok.extra_token_role(lm.process.name, lm.process.model_vocab_size - lm.tokenizer.vocab_size)
    hf_tok.save(hf_tok.to_transformers(lm.tokenizer, role, lm.context), folder)


def _write_thunderdlm(folder: Path, lm: LoadedRun, cfg: RunConfig, source: dict, weights: str,
                      lora: bool) -> None:
    """thunderdlm_export.json, tokenizer/ and data.json: what thunderdlm.load(DIR) reads."""
    lm.tokenizer.save(folder / "tokenizer")
    if (lm.run_dir / "data.json").exists():
        shutil.copy2(lm.run_dir / "data.json", folder / "data.json")
    if (lm.run_dir / "eval.json").exists():        # the figures the model card quotes
        shutil.copy2(lm.run_dir / "eval.json", folder / "eval.json")
    info = {"format": 1, "run_config": cfg.to_dict(), "weights": weights, "lora": lora,
            "process": lm.process.name, "noise_token_id": lm.process.noise_token_id,
            "tokenizer_vocab_size": lm.tokenizer.vocab_size,
            "model_vocab_size": lm.process.model_vocab_size, **source}
    ck.atomic_write_text(folder / EXPORT_INFO, json.dumps(info, indent=1))


# ---- checking --------------------------------------------------------------------------------------

@torch.no_grad()
def _verify(folder: Path, lm: LoadedRun, config) -> float:
    """The copied modelling code with the exported weights reproduces thunderdlm's outputs on a probe
    batch (to 1e-5), and the exported tokenizer's ids are thunderdlm's; returns the largest gap."""
    from thunderdlm.hf_export.modeling_thunderdlm import ThunderDLMModel

    model = ThunderDLMModel(type(config).from_json_file(str(folder / "config.json"))).eval()
    saved = ck.load_tensors(folder / "model.safetensors")
    try:
        model.load_state_dict(saved, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the exported weights do not fit the exported modelling code: "
                              f"{str(e).splitlines()[0]}; the export was not written") from None
    kwargs, ours = hf_config.probe(lm)
    got = model(**kwargs).logits
    diff = float((got - ours).abs().max()) if got.shape == ours.shape else float("inf")
    if not diff <= TOLERANCE:
        raise CheckpointError(f"the exported model's outputs differ from thunderdlm's by {diff:.3g} "
                              f"(> {TOLERANCE:g}) on a probe batch; the export was not written")
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    ids = _real_ids(kwargs, lm)
    text = lm.tokenizer.decode(ids) if ids else ""
    if text and fast.encode(text, add_special_tokens=False) != lm.tokenizer.encode(text):
        raise CheckpointError("the exported tokenizer encodes the probe text differently from the "
                              "run's tokenizer; the export was not written")
    return diff


def _real_ids(kwargs: dict, lm: LoadedRun) -> list[int]:
    """The probe's first row of real tokens (no mask / BOS ids), for the tokenizer check."""
    ids = kwargs.get("input_ids")
    if ids is None:
        return []
    return [i for i in ids[0].tolist() if i < lm.tokenizer.vocab_size]
