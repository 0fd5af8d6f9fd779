"""``thunderdlm export RUN --out DIR``: a run on a pretrained causal LM (``model.name: hf``) as a
standalone run folder with its LoRA adapters merged, plus the adapted LM for plain ``transformers``.

::

    DIR/config.json                  RUN's config with model.lora_rank=0 (merged),
                                     model.path=DIR/hf (absolute) and out_dir=DIR
    DIR/tokenizer/, DIR/data.json    copied from RUN
    DIR/checkpoints/step_N/          model.safetensors: the merged weights (RUN's EMA weights when it
                                     kept them, as sampling uses) + state.json (RUN's step, tokens...)
                                     no optimizer: the export samples and scores, it does not resume
    DIR/hf/                          the merged *ForCausalLM (save_pretrained, safetensors) and, for an
                                     ``hf`` data tokenizer, that tokenizer (save_pretrained)
    DIR/hf/thunderdlm_export.json    what DIR/hf is: process, mask token id, logit shift, attention
                                     that must be bidirectional, modules that live outside it

Merging: peft's wrapped ``...q_proj.base_layer.weight`` W and its adapters A (r, in), B (out, r)
become one plain ``...q_proj.weight`` W + (alpha / r)·B·A, so the merged network is exactly the
one a config with ``lora_rank=0`` builds; the export checks this by building that network from
DIR/hf, comparing its pretrained weights with the merged ones and loading the checkpoint strictly.
Everything is written into a hidden sibling folder first and renamed to DIR at the end, so a
failed export leaves no half-written DIR (and ``--force`` replaces an old one only on success).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from thunderdlm import checkpoint as ck
from thunderdlm.api import load as load_run
from thunderdlm.errors import CheckpointError
from thunderdlm.models.hf_adapter import HFDenoiser
from thunderdlm.run_config import RunConfig, read_run_config
from thunderdlm.runfolder import RunFolder

HF_DIR = "hf"
EXPORT_INFO = "thunderdlm_export.json"


@dataclass
class ExportResult:
    """What ``export_run`` wrote."""

    out: Path                      # the new run folder
    hf_dir: Path                   # out / "hf": the merged causal LM (+ tokenizer)
    source_checkpoint: Path        # the checkpoint of RUN that was exported
    step: int                      # its training step
    weights: str                   # "ema" or "model": which file of it
    merged_lora: bool              # whether LoRA adapters were folded in
    outside_causal_lm: list[str]   # modules kept only in the run folder checkpoint


def export_run(run: str | Path, out: str | Path, checkpoint: str | None = None,
               force: bool = False) -> ExportResult:
    """Export RUN (an ``hf``-backbone run) into ``out``; see the module docstring."""
    run_dir, out = Path(run), Path(out)
    cfg = read_run_config(run_dir)
    if cfg.model.name != "hf":
        raise CheckpointError(f"run '{run_dir}' has model.name={cfg.model.name!r}: export is for runs "
                              "whose backbone is a pretrained Hugging Face model (model.name: hf, the "
                              "hf adapter); this run folder is already standalone, copy it instead")
    _check_out(run_dir, out, force)
    lm = load_run(run_dir, checkpoint=checkpoint, device="cpu")          # EMA weights when kept
    weights = "ema" if (lm.checkpoint / "ema.safetensors").exists() else "model"
    prefix, backbone = find_hf_backbone(lm.model, run_dir)
    merged = cfg.model.lora_rank > 0
    if merged:
        backbone.merge_lora()
    state = lm.model.state_dict()
    leftover = [k for k in state if "lora_" in k]
    if leftover:
        raise CheckpointError(f"merging the LoRA adapters of '{lm.checkpoint}' left {len(leftover)} "
                              f"adapter tensors (e.g. {leftover[0]}); the export was not written")
    extras = outside_causal_lm(state, prefix)
    source_state = ck.read_state(lm.checkpoint)

    with ck.atomic_folder(out) as tmp:
        _write_hf(tmp / HF_DIR, backbone, lm, cfg, weights, extras)
        _write_run_folder(tmp, run_dir, lm, state, source_state, weights, merged,
                          _exported_config(cfg, out, out))
        _verify(tmp, lm, state, _exported_config(cfg, tmp, out), prefix)
    return ExportResult(out, out / HF_DIR, lm.checkpoint, int(source_state.get("step", 0)),
                        weights, merged, extras)


# ---- finding the adapter ---------------------------------------------------------------------------

def find_hf_backbone(net: nn.Module, run_dir: Path) -> tuple[str, HFDenoiser]:
    """The one ``HFDenoiser`` inside the network and its state-dict prefix ('' or 'backbone.')."""
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, HFDenoiser)]
    if len(found) != 1:
        raise CheckpointError(f"the network of run '{run_dir}' holds {len(found)} hf adapters "
                              "(HFDenoiser); export needs exactly one")
    name, module = found[0]
    return (name + "." if name else ""), module


def outside_causal_lm(state: dict[str, torch.Tensor], prefix: str) -> list[str]:
    """Top-level modules of the network that are not part of the causal LM (``{prefix}lm.``):
    time embedding, a new output head, the embedding bridge..."""
    names = set()
    for key in state:
        if key.startswith(prefix + "lm."):
            continue
        inside = key.startswith(prefix)
        top = key[len(prefix):].split(".")[0] if inside else key.split(".")[0]
        names.add(prefix + top if inside else top)
    return sorted(names)


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


def _exported_config(cfg: RunConfig, hf_parent: Path, out: Path) -> RunConfig:
    """The run config of the export: no LoRA (merged), the backbone read from ``hf_parent/hf``."""
    data = cfg.to_dict()
    data["model"]["lora_rank"] = 0
    data["model"]["path"] = str((hf_parent / HF_DIR).resolve())
    data["out_dir"] = str(out)
    return RunConfig.from_data(data)


def _write_hf(folder: Path, backbone: HFDenoiser, lm, cfg: RunConfig, weights: str,
              extras: list[str]) -> None:
    """The merged causal LM and the tokenizer for ``AutoModelForCausalLM.from_pretrained``."""
    causal = backbone.causal_lm
    causal.config.is_causal = False           # trained bidirectional (the adapter sets it too)
    causal.save_pretrained(str(folder), safe_serialization=True)
    hf_tokenizer = getattr(lm.tokenizer, "kind", None) == "hf"
    if hf_tokenizer:
        lm.tokenizer.backend.save_pretrained(str(folder))
    info = {
        "what": "the pretrained body of a thunderdlm diffusion LM, fine-tuned (LoRA merged) as a "
                "bidirectional denoiser; it is not an autoregressive LM any more",
        "source_run": str(lm.run_dir.resolve()), "source_checkpoint": lm.checkpoint.name,
        "weights": weights, "process": cfg.process.name,
        "mask_token_id": lm.process.noise_token_id,
        "tokenizer_vocab_size": lm.tokenizer.vocab_size,
        "model_vocab_size": lm.process.model_vocab_size,
        "tokenizer_saved_here": hf_tokenizer,
        "shift_logits": cfg.model.shift_logits,
        "is_causal": False,
        "attention": "bidirectional: keep config.is_causal=False and call the model with "
                     "is_causal=False and no attention mask (the causal default is not what it was "
                     "trained with)",
        "time_conditioning": cfg.model.time_conditioning,
        "lm_head_is_the_output": backbone.head is None,
        "merged_lora": ({"rank": cfg.model.lora_rank, "alpha": cfg.model.lora_alpha or cfg.model.lora_rank,
                         "targets": list(cfg.model.lora_targets)} if cfg.model.lora_rank > 0 else None),
        "outside_causal_lm": extras,
        "note": ("the modules in outside_causal_lm (time embedding, new heads, embedding bridge) are not "
                 "in this folder: they live only in the run folder's checkpoint; load the whole model "
                 "with thunderdlm.load(<the export folder>)" if extras else
                 "every weight of the network is in this folder"),
    }
    ck.atomic_write_text(folder / EXPORT_INFO, json.dumps(info, indent=1))


def _write_run_folder(folder: Path, run_dir: Path, lm, state: dict, source_state: dict, weights: str,
                      merged: bool, cfg: RunConfig) -> None:
    """config.json, tokenizer/, data.json and one checkpoint holding ``state`` (atomically)."""
    RunFolder(folder).write_config(cfg)
    shutil.copytree(run_dir / "tokenizer", folder / "tokenizer")
    if (run_dir / "data.json").exists():
        shutil.copy2(run_dir / "data.json", folder / "data.json")
    info = dict(source_state)
    step = int(info.get("step", 0))
    info.update(exported_from=str(run_dir.resolve()), source_checkpoint=lm.checkpoint.name,
                source_weights=weights, merged_lora=merged)
    tmp = ck.begin_checkpoint(folder, step)
    ck.write_model_files(tmp, state, None, None, info)
    ck.commit_checkpoint(folder, tmp, step, keep=1)


def _verify(folder: Path, lm, state: dict, cfg: RunConfig, prefix: str) -> None:
    """The exported config builds exactly the saved network, and hf/ holds the merged LM weights."""
    net = lm.process.build_network(cfg.model, cfg.data.seq_len)
    built = net.state_dict()
    for key, value in built.items():
        if key.startswith(prefix + "lm.") and key in state and not torch.equal(value, state[key]):
            raise CheckpointError(f"'{folder / HF_DIR}' does not reload to the merged weights "
                                  f"({key} differs); the export was not written")
    saved = ck.load_tensors(ck.latest_checkpoint(folder) / "model.safetensors")
    try:
        net.load_state_dict(saved)
    except RuntimeError as e:
        raise CheckpointError(f"the merged weights do not fit the network of the exported config "
                              f"(model.lora_rank=0): {str(e).splitlines()[0]}; the export was not "
                              "written") from None
