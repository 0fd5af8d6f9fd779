"""``thunderdlm.load()`` is a library call: it leaves the process's torch state as it found it —
thread count, default dtype, grad mode, the denormal flag and the global RNG (CPU) — while the
entry points (the CLI, the trainer) are the ones that set threads and flush denormals."""
import pytest
import torch

import thunderdlm
from thunderdlm.data import prepare_data
from thunderdlm.run_config import RunConfig
from thunderdlm.train import Trainer


def denormals_flushed() -> bool:
    """torch has no getter for set_flush_denormal: 1e-30 * 1e-10 is a float32 denormal, or 0."""
    return (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() == 0.0


def global_state() -> dict:
    return {"threads": torch.get_num_threads(), "dtype": torch.get_default_dtype(),
            "grad": torch.is_grad_enabled(), "flush": denormals_flushed(),
            "rng": torch.get_rng_state()}


@pytest.fixture(scope="module", params=[("masked", "ddit"), ("autoregressive", "gpt")], ids=["masked", "ar"])
def run_dir(request, tmp_path_factory):
    process, model = request.param
    root = tmp_path_factory.mktemp(f"load_{process}")
    (root / "c.txt").write_text("to be or not to be, that is the question.\n" * 50)
    data = prepare_data(root / "d", source=None, paths=[str(root / "c.txt")], tokenizer="char")
    cfg = RunConfig.from_data({"data": {"dir": str(data), "seq_len": 16},
                               "model": {"name": model, "n_layer": 1, "n_head": 2, "n_embd": 16},
                               "process": {"name": process},
                               "train": {"batch_size": 4, "max_steps": 2, "eval_interval": 0,
                                         "ckpt_interval": 2, "ema_decay": 0.9}})
    Trainer(cfg, root / "run", show=False).fit()
    return root / "run"


def test_load_leaves_torch_global_state_unchanged(run_dir):
    threads, flush = torch.get_num_threads(), denormals_flushed()
    try:
        # a caller whose settings differ from every default the entry points pick
        torch.set_num_threads(1 if threads != 1 else 2)
        torch.set_flush_denormal(not flush)
        torch.manual_seed(123)
        before = global_state()
        with torch.no_grad():
            lm = thunderdlm.load(run_dir, device="cpu")
            inside = global_state()
        after = global_state()
        for key in ("threads", "dtype", "flush"):
            assert inside[key] == after[key] == before[key], key
        assert inside["grad"] is False and after["grad"] is True        # the caller's own no_grad
        assert torch.equal(inside["rng"], before["rng"])                # building the network drew nothing
        assert torch.equal(after["rng"], before["rng"])
        assert not lm.model.training
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(flush)
