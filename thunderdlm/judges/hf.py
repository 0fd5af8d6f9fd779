"""A Hugging Face causal LM in a local folder as a judge (SmolLM2 after `thunderdlm convert`).

Loading is strictly offline (``local_files_only=True``): the folder must hold ``config.json``, the
weights and the tokenizer files, as ``save_pretrained`` writes them. A ``thunderdlm_judge.json``
beside them (written by the converter) names the judge and its BOS token; without it the
tokenizer's BOS is used, else its EOS (GPT-2 style document separator).

Window: at most ``MAX_WINDOW`` tokens per forward, BOS included (or the model's
``max_position_embeddings`` when smaller); memory of one forward is about
batch_size × window × vocab × 4 bytes of logits (8 × 1024 × 49,152 × 4 B ≈ 1.6 GB for SmolLM2),
so long texts are windowed well below SmolLM2's 8,192 positions.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from thunderdlm.judges.base import Judge, JudgeError

META_FILE = "thunderdlm_judge.json"
MAX_WINDOW = 1024


class HFJudge(Judge):
    """Judge backed by a ``transformers`` causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, name: str, bos_token: str | None = None,
                 device: str | torch.device = "cpu", stride: int | None = None):
        self.model = model.to(device).eval()
        self.tokenizer, self.name, self.device = tokenizer, name, torch.device(device)
        bos_token = bos_token or tokenizer.bos_token or tokenizer.eos_token
        bos_id = tokenizer.convert_tokens_to_ids(bos_token) if bos_token else None
        if bos_id is None or (bos_id == tokenizer.unk_token_id and bos_token != tokenizer.unk_token):
            raise JudgeError(f"judge {name}: its tokenizer has no token {bos_token!r} to start a text with")
        self.bos_token, self.bos_id = bos_token, int(bos_id)
        n_pos = getattr(model.config, "max_position_embeddings", None) or MAX_WINDOW
        self.window = min(MAX_WINDOW, int(n_pos)) - 1             # room for BOS
        self.stride = stride or max(1, self.window // 2)
        self.pad_id = self.bos_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_logprobs(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        inp = torch.cat([torch.full((B, 1), self.bos_id, dtype=x.dtype, device=x.device), x], dim=1)
        att = torch.cat([torch.ones((B, 1), dtype=torch.long, device=x.device), mask.long()], dim=1)
        logits = self.model(input_ids=inp, attention_mask=att).logits      # (B, T+1, V); [:, j] predicts inp[:, j+1]
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for b in range(B):               # one row at a time: a single (T, V) log-softmax copy in memory
            logp = F.log_softmax(logits[b, :-1].float(), dim=-1)          # (T, V)
            out[b] = logp.gather(-1, x[b].unsqueeze(-1)).squeeze(-1)
        return out


def is_hf_folder(path: Path) -> bool:
    """A folder written by ``save_pretrained`` (config.json with a model_type)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "model_type" in json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise JudgeError(f"'{path}' is not valid JSON ({e}); delete the folder and convert again") from None


def load_hf_judge(folder: str | Path, device: str | torch.device = "cpu", name: str | None = None) -> HFJudge:
    """Load a local ``save_pretrained`` folder (offline) as a judge."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    meta = read_meta(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise JudgeError(f"cannot load a causal LM judge from '{folder}': {str(e).splitlines()[0]}") from None
    return HFJudge(model, tokenizer, name or meta.get("name") or str(folder), meta.get("bos_token"), device)
