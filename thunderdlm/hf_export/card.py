"""The model card (``README.md``) of an export: what the model is, its data, its config, the figures
the run measured (``eval.json``, copied as it is: nothing is computed or invented here) and how to
sample, with ``thunderdlm sample`` and, for masked-type models, in plain torch + transformers.

``MASKED_SAMPLER`` is that snippet: the exported model's own ``generate()`` (LLaDA's low-confidence
remasking over blocks, ``modeling_thunderdlm.py``). The export tests run it, as printed in the card,
in a process that imports only torch and transformers.
"""
from __future__ import annotations

import json

MASKED_PROCESSES = ("masked", "block")

#: a complete masked-diffusion sampler over the exported model; ``{dir}`` is filled in
MASKED_SAMPLER = '''import json, torch
from transformers import AutoModel, AutoTokenizer

path = "{dir}"
model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()   # modeling_thunderdlm.py
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)         # reads config.json
gen = json.load(open(f"{{path}}/generation_config.json"))
mask = gen["mask_token_id"]
prompt = torch.tensor([tok.encode("{prompt}", add_special_tokens=False)], dtype=torch.long)
torch.manual_seed(0)
x = model.generate(prompt, max_new_tokens=gen["seq_len"] - prompt.shape[1], steps=32,
                   block_length=gen["block_length"], temperature=1.0, remasking="low_confidence")
print(tok.decode(x[0].tolist()))
'''


def model_card(lm, config, gen: dict, source: dict, run_dir, lora: bool) -> str:
    """README.md of the export of ``lm`` (a ``loading.LoadedRun``)."""
    cfg = lm.cfg
    n_params = sum(p.numel() for p in {id(p): p for p in lm.model.parameters()}.values())
    lines = [
        "---", "library_name: transformers", "tags: [thunderdlm, diffusion-language-model, "
        f"{cfg.process.name}]", "---", "",
        f"# {run_dir.name}: a {cfg.process.name} diffusion LM ({cfg.model.name} backbone)", "",
        f"Exported by `thunderdlm export` from `{source.get('source_run')}` "
        f"({source.get('checkpoint')}, step {source.get('step')}, {source.get('tokens', 0):,} training "
        f"tokens; {lm.weights_file} weights{', LoRA adapters unmerged' if lora else ''}). "
        f"{n_params:,} parameters; context {lm.context} tokens; vocabulary "
        f"{lm.tokenizer.vocab_size} ({lm.tokenizer.kind} tokenizer) + "
        f"{lm.process.model_vocab_size - lm.tokenizer.vocab_size} process token(s).", "",
        "## Data", "", *_data_lines(lm), "",
        "## Measured figures", "", *_figure_lines(lm), "",
        "## Config", "", "<details><summary>the run's config (thunderdlm RunConfig)</summary>", "",
        "```json", json.dumps(cfg.to_dict(), indent=1), "```", "</details>", "",
        "## Loading", "",
        "```python", "from transformers import AutoModel, AutoTokenizer",
        "model = AutoModel.from_pretrained(PATH, trust_remote_code=True)   # modeling_thunderdlm.py",
        "tok = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)   # or PreTrainedTokenizerFast",
        f"logits = model(input_ids, timesteps=sigma).logits                 # {_io(config)}",
        "```", "",
        "The network is a denoiser, not a left-to-right LM: `timesteps`, `attention_mask` and the "
        "inputs per process are described at the top of `modeling_thunderdlm.py`; the sampler's "
        "settings are in `generation_config.json`.", "",
        "## Sampling", "",
        "With thunderdlm (every process, the settings of `generation_config.json` as defaults):", "",
        "```bash", f"thunderdlm sample PATH --steps {gen['steps']}"
        + (f" --block-length {gen['block_length']}" if gen.get("block_length") else "")
        + " --prompt \"...\"", "thunderdlm eval PATH --windows 64", "```", "",
    ]
    if cfg.process.name in MASKED_PROCESSES and _plain_sampler_fits(gen):
        lines += ["With plain torch + transformers (the model's `generate()`: LLaDA's low-confidence "
                  "remasking, block by block):", "",
                  "```python", MASKED_SAMPLER.format(dir="PATH", prompt="").rstrip(), "```", ""]
    else:
        lines += [f"The reverse process of `{cfg.process.name}` is thunderdlm's "
                  f"(`thunderdlm/processes/`); the exported network gives its outputs exactly.", ""]
    if lora:
        lines += ["## The LoRA adapter", "",
                  "```python", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM",
                  "base = AutoModelForCausalLM.from_pretrained(PATH + '/lm')   # the base it was trained on",
                  "lm = PeftModel.from_pretrained(base, PATH + '/lora')       # bidirectional: is_causal=False",
                  "```", ""]
    return "\n".join(lines)


def _plain_sampler_fits(gen: dict) -> bool:
    """``generate()`` computes σ(t) for the log-linear schedule only."""
    return not gen.get("time_conditioning") or gen.get("schedule") == "loglinear"


def _io(config) -> str:
    if config.wrapper == "embedding":
        return "inputs_embeds=noisy latents, timesteps=t in [0, 1]"
    if config.wrapper == "forcing":
        return "inputs_embeds=noisy token embeddings, timesteps=levels (B, L)"
    return f"(B, L, {config.out_dim})"


def _data_lines(lm) -> list[str]:
    record = {}
    path = lm.run_dir / "data.json"
    if path.is_file():
        record = json.loads(path.read_text())
    meta = record.get("meta", {})
    if not meta:
        return ["No data record (data.json) was kept with the run."]
    tokens = meta.get("tokens", {})
    return [f"- source: {meta.get('source', 'user text')}",
            f"- tokenizer: {meta.get('tokenizer')} (vocabulary {meta.get('vocab_size')})",
            f"- tokens: {tokens.get('train', '?'):,} train / {tokens.get('val', '?'):,} validation"
            if tokens else "- tokens: not recorded",
            f"- data folder when trained: `{record.get('dir')}`"]


def _figure_lines(lm) -> list[str]:
    path = lm.run_dir / "eval.json"
    if not path.is_file():
        return ["The run has no `eval.json` (run `thunderdlm eval` on it); no figures are claimed here."]
    res = json.loads(path.read_text())
    kind = "exact NLL" if res.get("exact") else "NLL bound (NELBO)"
    lines = [f"From the run's `eval.json` ({res.get('checkpoint')}): validation {kind} "
             f"{res.get('nats_per_token', float('nan')):.4f} ± {res.get('stderr', float('nan')):.4f} "
             f"nats/token, {res.get('bits_per_char', float('nan')):.4f} bits/char over "
             f"{res.get('windows')} windows × {res.get('seq_len')} tokens ({res.get('t_samples')} "
             "t-samples each)."]
    samples = res.get("samples")
    if isinstance(samples, dict):
        for name, j in samples.get("judges", {}).items():
            lines.append(f"- judge {name}: {j.get('nats_per_char', float('nan')):.4f} nats/char on "
                         f"{samples.get('n')} samples of {samples.get('length')} tokens")
    return lines
