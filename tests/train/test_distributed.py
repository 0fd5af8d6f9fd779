import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.distributed
def test_two_process_torchrun_keeps_weights_identical(tiny_data, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "THUNDERDLM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(tiny_data), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = (tmp_path / "rank0.txt").read_text().split()
    r1 = (tmp_path / "rank1.txt").read_text().split()
    assert r0[0] == r1[0], "weights differ between ranks after DDP steps"
    assert r0[1] != r1[1], "both ranks drew the same batch: data is not sharded by rank"
    assert (tmp_path / "run" / "checkpoints" / "step_00000004" / "rng_rank1.safetensors").exists()
