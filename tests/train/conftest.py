import random

import pytest

from thunderdlm.data import prepare_data
from thunderdlm.run_config import RunConfig


def markov_text(n_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
    out = []
    while sum(len(w) + 1 for w in out) < n_chars:
        out.append(rng.choice(words))
    return " ".join(out)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    src = root / "corpus.txt"
    src.write_text(markov_text(30000))
    return prepare_data(root / "char", source=None, paths=[str(src)], tokenizer="char")


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    def make(**train):
        t = dict(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=12, log_interval=1,
                 eval_interval=0, ckpt_interval=5, eval_windows=8)
        t.update(train)
        return RunConfig.from_data({
            "data": {"dir": str(tiny_data), "seq_len": 16},
            "model": {"name": "ddit", "n_layer": 1, "n_head": 2, "n_embd": 16, "cond_dim": 16},
            "process": {"name": "masked"},
            "train": t,
            "seed": 7,
            "out_dir": str(tmp_path / "run"),
        })
    return make
