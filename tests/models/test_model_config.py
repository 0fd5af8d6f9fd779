"""ModelConfig validation and the build_model registry."""
from __future__ import annotations

import pytest

from thunderdlm.config import from_dict
from thunderdlm.errors import ConfigError
from thunderdlm.models import DDiT, GPT, MODELS, Backbone, ModelConfig, build_model
from thunderdlm.models.config import MODEL_NAMES


def test_defaults_are_valid() -> None:
    cfg = ModelConfig()
    assert (cfg.name, cfg.n_layer, cfg.n_head, cfg.n_embd) == ("ddit", 4, 4, 128)
    assert cfg.pos_emb == "rotary" and cfg.time_conditioning and not cfg.causal
    assert cfg.head_dim == 32


def test_n_embd_not_divisible_by_n_head() -> None:
    with pytest.raises(ConfigError, match=r"model\.n_embd"):
        ModelConfig(n_embd=130, n_head=4)


def test_odd_head_width_needs_non_rotary() -> None:
    with pytest.raises(ConfigError, match=r"model\.n_embd.*even"):
        ModelConfig(name="gpt", n_embd=12, n_head=4)
    assert ModelConfig(name="gpt", n_embd=12, n_head=4, pos_emb="learned").head_dim == 3


def test_ddit_with_learned_positions_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model\.pos_emb"):
        ModelConfig(name="ddit", pos_emb="learned")
    assert ModelConfig(name="gpt", pos_emb="learned").pos_emb == "learned"


@pytest.mark.parametrize("field, value", [("dropout", 1.0), ("dropout", -0.1), ("n_layer", 0),
                                          ("n_head", 0), ("cond_dim", 0), ("init_std", 0.0),
                                          ("pos_emb", "alibi")])
def test_out_of_range_fields_are_named(field: str, value) -> None:
    with pytest.raises(ConfigError, match=rf"model\.{field}"):
        ModelConfig(**{field: value})


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(ConfigError, match=r"model\.name.*did you mean 'ddit'"):
        ModelConfig(name="dit")


def test_build_model_unknown_name_suggests_closest() -> None:
    cfg = ModelConfig()
    cfg.name = "gtp"                                         # mutated after validation
    with pytest.raises(ConfigError, match=r"model\.name.*did you mean 'gpt'"):
        build_model(cfg, vocab_size=5, max_seq_len=8)


def test_build_model_picks_the_registered_class() -> None:
    assert set(MODELS) == set(MODEL_NAMES)
    small = dict(n_layer=1, n_head=2, n_embd=16, cond_dim=8)
    for name, cls in (("ddit", DDiT), ("gpt", GPT)):
        model = build_model(ModelConfig(name=name, **small), vocab_size=7, max_seq_len=8)
        assert isinstance(model, cls) and isinstance(model, Backbone)
        assert model.vocab_size == 7 and model.max_seq_len == 8


def test_from_dict_names_the_section() -> None:
    cfg = from_dict(ModelConfig, {"name": "gpt", "n_layer": "2", "dropout": "0.1"}, "model")
    assert (cfg.n_layer, cfg.dropout) == (2, 0.1)
    with pytest.raises(ConfigError, match=r"model\.n_layr.*did you mean 'n_layer'"):
        from_dict(ModelConfig, {"n_layr": 2}, "model")


def test_backbone_is_abstract() -> None:
    with pytest.raises(TypeError):
        Backbone(ModelConfig(), 5, 8)                        # type: ignore[abstract]
