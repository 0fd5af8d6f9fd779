"""Key padding (``valid``, models/base.py): a padded batch gives the real positions the outputs of
the unpadded windows, in every backbone and with every attention pattern (issue 19, item 5)."""
import pytest
import torch

from tests.perturbed_backbone import perturbed_backbone
from thunderdlm.processes.block.attention import training_plan, training_positions

V, L = 13, 12


def backbone(name, **kw):
    return perturbed_backbone(name, V, L, time_conditioning=True, **kw)


def padded_batch(n_real=(12, 7, 4), seed=0):
    """Rows of different lengths right-padded with random tokens, and their valid mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (len(n_real), L), generator=g)
    valid = torch.arange(L)[None, :] < torch.tensor(n_real)[:, None]
    return x, valid, n_real


@pytest.mark.parametrize("name,causal", [("ddit", False), ("ddit", True), ("gpt", False), ("gpt", True)])
def test_real_positions_read_as_the_unpadded_window(name, causal):
    model = backbone(name, causal=causal)
    x, valid, n_real = padded_batch()
    sigma = torch.rand(len(n_real))
    out = model(x, sigma, valid=valid)
    for row, n in enumerate(n_real):
        alone = model(x[row:row + 1, :n], sigma[row:row + 1])
        torch.testing.assert_close(out[row, :n], alone[0], atol=2e-5, rtol=1e-5)
    # what the pads hold does not matter, and without valid they do leak into bidirectional rows
    x2 = torch.where(valid, x, (x + 5) % V)
    torch.testing.assert_close(model(x2, sigma, valid=valid)[valid], out[valid], atol=1e-6, rtol=0)
    if not causal:
        assert (model(x2, sigma)[1, :7] - out[1, :7]).abs().max() > 1e-4
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["ddit", "gpt"])
def test_padding_narrows_a_structured_mask(name):
    """Block diffusion's x_t ⊕ x0 PiecewiseMask with padding: the real positions of a short window
    read as the same call on the window alone."""
    model = backbone(name)
    n, bs = 8, 4
    plan = training_plan(L, bs)
    x = torch.randint(0, V, (1, 2 * L), generator=torch.Generator().manual_seed(1))
    short = torch.cat([x[:, :n], x[:, L:L + n]], dim=1)
    valid = (torch.arange(L) < n).repeat(2)[None]
    out = model(x, None, attn_mask=plan, positions=training_positions(L, x.device), valid=valid)
    alone = model(short, None, attn_mask=training_plan(n, bs), positions=training_positions(n, x.device))
    torch.testing.assert_close(out[0, :n], alone[0, :n], atol=2e-5, rtol=1e-5)


def test_valid_is_checked():
    model = backbone("gpt")
    x, valid, _ = padded_batch()
    with pytest.raises(ValueError, match="valid"):
        model(x, None, valid=valid[:, :5])
    with pytest.raises(ValueError, match="at least one real"):
        model(x, None, valid=torch.zeros_like(valid))
