"""Tiny trained runs for the server tests (a few training steps: the tests check behaviour, not
quality) and a live server on a free loopback port."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import thunderdlm
from thunderdlm.run_config import RunConfig
from thunderdlm.train import Trainer

TEXT = "to be or not to be, that is the question. whether tis nobler in the mind to suffer. " * 60
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def _train(root: Path, name: str, data: Path, process: dict, seq_len: int = 32) -> Path:
    cfg = RunConfig.from_data({"data": {"dir": str(data), "seq_len": seq_len}, "process": process,
                               "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "cond_dim": 16},
                               "train": {"batch_size": 8, "max_steps": 20, "lr": 1e-2, "eval_interval": 0,
                                         "ckpt_interval": 20}})
    Trainer(cfg, root / name, show=False).fit()
    return root / name


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """masked and block (blocks of 4) runs on a char tokenizer, and a masked run whose (byte BPE)
    tokenizer has a chat template."""
    from thunderdlm.data import prepare_data

    root = tmp_path_factory.mktemp("serve_runs")
    (root / "c.txt").write_text(TEXT)
    char = prepare_data(root / "d_char", source=None, paths=[str(root / "c.txt")], tokenizer="char")
    runs = {"masked": _train(root, "masked", char, {"name": "masked"}),
            "block": _train(root, "block", char, {"name": "block", "block_size": 4})}
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from tiny_pretrained import tiny_pretrained
    from transformers import AutoTokenizer

    tiny_pretrained(root / "hf")
    tok = AutoTokenizer.from_pretrained(str(root / "hf"), local_files_only=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(root / "hf"))
    hf = prepare_data(root / "d_hf", source=None, paths=[str(root / "c.txt")], tokenizer="hf",
                      hf_path=str(root / "hf"))
    runs["chat"] = _train(root, "chat", hf, {"name": "masked"})
    return runs


@pytest.fixture(scope="session")
def tiny_lms(tiny_runs):
    return {name: thunderdlm.load(path) for name, path in tiny_runs.items()}


@pytest.fixture(scope="session")
def make_server(tiny_runs, tiny_lms):
    """make_server(**cfg): a ServerThread (a context manager) serving the tiny runs, named masked,
    block and chat, with ServeConfig(**cfg)."""
    from thunderdlm.serve.config import ServeConfig
    from thunderdlm.serve.server import ServerThread, build_app

    def make(**cfg):
        names = list(tiny_runs)
        app = build_app([tiny_runs[n] for n in names], ServeConfig(**cfg), lms=[tiny_lms[n] for n in names])
        return ServerThread(app)
    return make


@pytest.fixture(scope="session")
def server(make_server):
    with make_server(batch_wait_ms=20) as s:
        yield s
