"""Continuous inputs, hidden features and output width: the backbone options that embedding
diffusion, diffusion forcing and adapters build on (models/base.py docstring)."""
import pytest
import torch

from thunderdlm.models import ModelConfig, build_model

V, L = 13, 12


def backbone(name, out_dim=None, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, n_layer=2, n_head=2, n_embd=32, cond_dim=16, time_conditioning=True, **kw)
    model = build_model(cfg, V, L, out_dim=out_dim)
    with torch.no_grad():                     # DDiT's zero-initialised layers would hide bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", ["ddit", "gpt"])
def test_inputs_embeds_of_the_token_rows_equal_the_token_path(name):
    model = backbone(name)
    x = torch.randint(0, V, (3, L))
    sigma = torch.rand(3)
    e = model.token_embedding[x]
    assert torch.allclose(model(None, sigma, inputs_embeds=e), model(x, sigma), atol=1e-6)
    # and another embedding gives another output: the input is really read
    assert not torch.allclose(model(None, sigma, inputs_embeds=e + torch.randn_like(e)), model(x, sigma), atol=1e-3)


@pytest.mark.parametrize("name", ["ddit", "gpt"])
def test_hidden_features_are_what_the_output_layer_reads(name):
    model = backbone(name)
    x = torch.randint(0, V, (2, L))
    sigma = torch.rand(2, L)                  # per-token levels too
    h = model(x, sigma, return_hidden=True)
    assert h.shape == (2, L, 32)
    head = model.output_layer.linear if name == "ddit" else model.lm_head
    assert torch.allclose(head(h), model(x, sigma), atol=1e-5)


@pytest.mark.parametrize("name", ["ddit", "gpt"])
def test_out_dim_sets_the_output_width_and_every_parameter_gets_a_gradient(name):
    model = backbone(name, out_dim=7).train()
    x = torch.randint(0, V, (2, L))
    out = model(x, torch.rand(2))
    assert out.shape == (2, L, 7)
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gpt_unties_its_head_when_the_output_is_not_the_vocabulary():
    model = backbone("gpt", out_dim=7, tie_embeddings=True)
    assert model.lm_head.weight.shape == (7, 32) and model.lm_head.weight is not model.wte.weight
    tied = backbone("gpt", tie_embeddings=True)
    assert tied.lm_head.weight is tied.wte.weight


@pytest.mark.parametrize("name", ["ddit", "gpt"])
def test_bad_inputs_are_named(name):
    model = backbone(name)
    x = torch.randint(0, V, (2, L))
    with pytest.raises(ValueError, match="not both"):
        model(x, inputs_embeds=model.token_embedding[x])
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        model(None, inputs_embeds=torch.zeros(2, L, 5))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(None, inputs_embeds=torch.zeros(2, L + 1, 32))
    with pytest.raises(ValueError, match="token ids x or inputs_embeds"):
        model(None)
