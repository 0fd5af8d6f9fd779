"""A new user's own corpus through the command line with no edits: ``data prepare --text my.parquet``
→ ``train`` → ``sample`` → ``eval --data OTHER`` on a second corpus prepared with the run's tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from thunderdlm.cli import main

LINES = ["ROMEO: But, soft! what light through yonder window breaks?",
         "JULIET: O Romeo, Romeo! wherefore art thou Romeo?",
         "ROMEO: It is the east, and Juliet is the sun."]


@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("own")
    docs = [f"{LINES[i % 3]}\n{LINES[(i + 1) % 3]}\n" for i in range(60)]
    pq.write_table(pa.table({"meta": [{"body": d} for d in docs]}), root / "my.parquet")
    assert main(["data", "prepare", "--text", str(root / "my.parquet"), "--text-field", "meta.body",
                 "--out", str(root / "data"), "--quiet"]) == 0
    (root / "tiny.yaml").write_text(f"""
data: {{dir: {root / 'data'}, seq_len: 32}}
model: {{name: ddit, n_layer: 1, n_head: 2, n_embd: 16, cond_dim: 16}}
train: {{batch_size: 8, max_steps: 4, eval_interval: 2, ckpt_interval: 2, eval_windows: 2}}
out_dir: {root / 'run'}
""")
    assert main(["train", str(root / "tiny.yaml"), "--quiet"]) == 0
    return root


def test_prepare_reports_documents_and_the_run_knows_eos(own_run: Path, capsys):
    meta = json.loads((own_run / "data" / "meta.json").read_text())
    assert meta["documents"] == 60 and meta["tokenizer"] == "char"
    tokenizer_meta = json.loads((own_run / "run" / "tokenizer" / "tokenizer_meta.json").read_text())
    assert tokenizer_meta["eos_id"] == meta["vocab_size"] - 1


def test_sample_from_the_run(own_run: Path, capsys):
    assert main(["sample", str(own_run / "run"), "--steps", "4", "--length", "16", "--prompt", "ROMEO:",
                 "--seed", "0", "--json"]) == 0
    sample = json.loads(capsys.readouterr().out)["samples"][0]
    assert sample.startswith("ROMEO:")


def test_eval_on_a_second_corpus_prepared_with_the_runs_tokenizer(own_run: Path, capsys):
    other = own_run / "other.csv"
    other.write_text("text\n" + "".join(f'"{line}"\n' for line in LINES * 20), encoding="utf-8")
    assert main(["data", "prepare", "--text", str(other), "--tokenizer-from", str(own_run / "run"),
                 "--out", str(own_run / "other"), "--quiet"]) == 0
    assert "60 documents" in capsys.readouterr().out
    out = own_run / "eval_other.json"
    assert main(["eval", str(own_run / "run"), "--data", str(own_run / "other"), "--t-samples", "1",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["data"] == str(own_run / "other") and res["nats_per_token"] > 0 and res["windows"] > 0


def test_eval_on_data_with_another_tokenizer_is_a_one_line_error(own_run: Path, capsys):
    (own_run / "plain.txt").write_text("\n".join(LINES) * 20, encoding="utf-8")
    assert main(["data", "prepare", "--text", str(own_run / "plain.txt"), "--out", str(own_run / "plain"),
                 "--quiet"]) == 0          # its own char tokenizer: other characters, no eos
    capsys.readouterr()
    assert main(["eval", str(own_run / "run"), "--data", str(own_run / "plain")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs from the one run" in err and f"--tokenizer-from {own_run / 'run'}" in err


def test_prepare_argument_conflicts_are_one_line_errors(own_run: Path, capsys):
    assert main(["data", "prepare", "--text", str(own_run / "my.parquet"), "--tokenizer-from",
                 str(own_run / "run"), "--tokenizer", "bpe"]) == 2
    assert "drop --tokenizer" in capsys.readouterr().err
    assert main(["data", "prepare", "--text", str(own_run / "my.parquet"), "--text-field", "body",
                 "--out", str(own_run / "x")]) == 2
    assert "no field 'body' (columns: meta.body)" in capsys.readouterr().err
