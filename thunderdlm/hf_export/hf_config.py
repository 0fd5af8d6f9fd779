"""A loaded run as the pieces of its transformers export: the ``ThunderDLMConfig`` that rebuilds its
network in ``modeling_thunderdlm.py``, the sampler settings of ``generation_config.json``, and a
probe batch (inputs for the exported model and thunderdlm's own outputs on them) that the export
and its tests compare.

The network kinds: a backbone alone (masked, uniform, score-entropy, block, autoregressive and
teacher-forcing runs: token ids + a noise level -> logits), embedding diffusion's
``EmbeddingDenoiser`` (noisy latents + t -> latents or logits) and diffusion forcing's
``DiffusionForcingNet`` (noisy token embeddings + per-token levels -> embeddings).
"""
from __future__ import annotations

import torch

from thunderdlm.hf_export.configuration_thunderdlm import ThunderDLMConfig
from thunderdlm.hf_export.tokenizer import extra_token_role
from thunderdlm.processes.embedding.network import EmbeddingDenoiser
from thunderdlm.processes.forcing.network import DiffusionForcingNet

AUTO_MAP = {"AutoConfig": "configuration_thunderdlm.ThunderDLMConfig",
            "AutoModel": "modeling_thunderdlm.ThunderDLMModel",
            "AutoModelForMaskedLM": "modeling_thunderdlm.ThunderDLMForMaskedLM"}
PROBE_LEN = 24          # positions of the probe batch (at most the context)


def build(lm, hf_backbone=None) -> ThunderDLMConfig:
    """The export's config for ``lm`` (a ``loading.LoadedRun``); ``hf_backbone``: its HFDenoiser."""
    cfg, net, process = lm.cfg, lm.model, lm.process
    m = cfg.model
    fields: dict = {"wrapper": "none"}
    backbone = net
    if isinstance(net, EmbeddingDenoiser):
        backbone = net.backbone
        fields = dict(wrapper="embedding", latent_dim=net.latent_dim, bridge=net.bridge, head=net.head,
                      input_scale=net.input_scale,
                      anchor_dim=net.anchor_proj.out_features if net.anchor_proj is not None else None,
                      rounding_bias=net.rounding_bias is not None,
                      time_bins=int(net.time_sampler.m2.shape[0]) if net.time_sampler is not None else None)
    elif isinstance(net, DiffusionForcingNet):
        backbone = net.backbone
        fields = dict(wrapper="forcing", level_embedding=net.level_embedding,
                      input_scale=net.input_scale, decode_vocab_size=net.vocab_size)
    if hf_backbone is not None:
        lm_config = hf_backbone.causal_lm.config.to_dict()
        lm_config["is_causal"] = False
        fields.update(lm_config=lm_config, time_injection=m.time_injection, shift_logits=m.shift_logits,
                      lora=lora_layout(hf_backbone, m))
    role = extra_token_role(process.name, process.model_vocab_size - lm.tokenizer.vocab_size)
    return ThunderDLMConfig(
        backbone=m.name, vocab_size=backbone.vocab_size, out_dim=backbone.out_dim,
        max_seq_len=backbone.max_seq_len, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
        cond_dim=m.cond_dim, mlp_ratio=m.mlp_ratio, causal=m.causal,
        time_conditioning=m.time_conditioning, pos_emb=m.pos_emb, bias=m.bias,
        tie_embeddings=m.tie_embeddings, process=process.name,
        mask_token_id=process.noise_token_id if role == "mask" else None,
        block_size=getattr(cfg.process, "block_size", None),
        schedule=getattr(cfg.process, "schedule", None), schedule_eps=getattr(cfg.process, "eps", 0.0) or 0.0,
        sigma_conditioning=bool(process.name in ("masked", "block") and cfg.process.time_conditioning),
        auto_map=dict(AUTO_MAP), architectures=["ThunderDLMModel"], **fields)


def lora_layout(hf_backbone, m) -> dict | None:
    """A LoRA run's adapters as the modelling code rebuilds them: rank, scaling and the adapted
    modules (paths inside the causal LM, read from peft's ``<module>.lora_A.default.weight`` keys)."""
    if m.lora_rank == 0:
        return None
    suffix = ".lora_A.default.weight"
    modules = sorted(k.removesuffix(suffix) for k in hf_backbone.causal_lm.state_dict() if k.endswith(suffix))
    return {"rank": m.lora_rank, "scaling": (m.lora_alpha or m.lora_rank) / m.lora_rank, "modules": modules}


def generation_settings(lm) -> dict:
    """generation_config.json: the process and the defaults of ``thunderdlm sample`` for it."""
    process, pcfg = lm.process, lm.cfg.process
    role = extra_token_role(process.name, process.model_vocab_size - lm.tokenizer.vocab_size)
    block = getattr(pcfg, "block_size", None)
    settings = {
        "process": process.name,
        "mask_token_id": process.noise_token_id if role == "mask" else None,
        "bos_token_id": process.noise_token_id if role == "bos" else None,
        "seq_len": lm.context,
        "steps": 64, "block_length": block, "remasking": "ancestral", "threshold": None,
        "temperature": 1.0, "top_k": 0, "top_p": 1.0,
        "time_conditioning": bool(getattr(pcfg, "time_conditioning", lm.cfg.model.time_conditioning)),
        "schedule": getattr(pcfg, "schedule", None) or getattr(pcfg, "noise", None),
        "schedule_eps": getattr(pcfg, "eps", None),
        "sampler": "thunderdlm sample <this folder> (thunderdlm's defaults shown here)",
    }
    for key in ("graph", "parameterization", "time", "sampler", "scheduling_matrix", "timesteps",
                "sampling_timesteps", "objective"):
        value = getattr(pcfg, key, None)
        if value is not None and key not in ("sampler",):
            settings[key] = value
    if getattr(pcfg, "sampler", None):
        settings["process_sampler"] = pcfg.sampler
    return settings


@torch.no_grad()
def probe(lm, batch: int = 2, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """(keyword arguments of the exported model's forward, thunderdlm's output on the same inputs):
    random ids (mask / BOS ids included) and noise levels, or random latents / embeddings."""
    g = torch.Generator().manual_seed(seed)
    net, L = lm.model, min(lm.context, PROBE_LEN)
    if isinstance(net, EmbeddingDenoiser):
        z = torch.randn(batch, L, net.latent_dim, generator=g)
        t = torch.rand(batch, generator=g)
        x_sc = torch.randn(batch, L, net.latent_dim, generator=g)
        return {"inputs_embeds": z, "timesteps": t, "self_conditioning": x_sc}, net(z, t, x_sc)
    if isinstance(net, DiffusionForcingNet):
        x = torch.randn(batch, L, net.n_embd, generator=g)
        levels = torch.randint(-1, lm.cfg.process.timesteps, (batch, L), generator=g)
        return {"inputs_embeds": x, "timesteps": levels}, net(x, levels)
    ids = torch.randint(0, lm.process.model_vocab_size, (batch, L), generator=g)
    sigma = 3 * torch.rand(batch, generator=g)
    return {"input_ids": ids, "timesteps": sigma}, net(ids, sigma)
