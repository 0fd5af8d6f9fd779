"""`thunderdlm bench`: suite validation before training, the manifest, and the tiny suite end to end
(train → measure → results.json / results.md / plots, then reuse, --force, resume)."""
import json
import math
import random
from pathlib import Path

import pytest
import torch

from thunderdlm.bench import load_results, load_suite, plan_suite
from thunderdlm.bench.manifest import Manifest, collect_manifest
from thunderdlm.bench.results import BenchResults, write_results
from thunderdlm.bench.suite import SuiteError, suite_names
from thunderdlm.checkpoint import list_checkpoints, read_state
from thunderdlm.cli import main
from thunderdlm.run_config import load_config

WORDS = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from thunderdlm.data import prepare_data

    rng = random.Random(0)
    root = tmp_path_factory.mktemp("bench_data")
    (root / "corpus.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(6000)))
    return prepare_data(root / "char", source=None, paths=[str(root / "corpus.txt")], tokenizer="char")


def write_suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def suite_yaml(data_dir, methods: str, extra: str = "") -> str:
    return f"""
methods:
{methods}
budget: {{steps: 2}}
shared: [data.dir={data_dir}, data.seq_len=32, train.batch_size=4]
sampling: {{n_samples: 1, length: 16, nfe: [2]}}
{extra}
"""


GOOD_METHODS = """  - {name: masked, preset: shakespeare_char}
  - {name: ar, preset: shakespeare_char_ar}"""


# ---- validation, before any training -----------------------------------------------------------

@pytest.mark.parametrize("methods, extra, match", [
    ("  - {preset: shakespeare_char}", "", r"methods\[0\]\.name.*missing"),
    (GOOD_METHODS.replace("name: ar", "name: masked"), "", r"methods\[1\]\.name.*duplicate method name 'masked'"),
    (GOOD_METHODS.replace("shakespeare_char_ar", "shakespeare_chr_ar"), "",
     r"methods\[1\]\.preset.*shakespeare_chr_ar.*did you mean 'shakespeare_char_ar'"),
    (GOOD_METHODS, "judges: [no_such_judge]", r"judges\[0\].*no_such_judge"),
    (GOOD_METHODS, "sampling: {nfe: [16, 0]}", r"sampling\.nfe\[1\].*≥ 1"),
    (GOOD_METHODS, "budgett: {minutes: 1}", r"unknown key 'budgett'.*did you mean 'budget'"),
    (GOOD_METHODS.replace("preset: shakespeare_char}", "preset: shakespeare_char, overrides: [train.max_steps=9]}", 1),
     "", r"methods\[0\]\.overrides\[0\].*'train.max_steps' is set by the suite's 'budget'"),
    (GOOD_METHODS.replace("preset: shakespeare_char}", "preset: shakespeare_char, overrides: [model.n_layr=2]}", 1),
     "", r"method 'masked'.*n_layr.*did you mean 'n_layer'"),
    (GOOD_METHODS, "sampling: {length: 64}", r"sampling\.length.*longer than method 'masked'"),
])
def test_bad_suites_fail_with_a_named_error_before_training(tmp_path, data_dir, methods, extra, match):
    text = suite_yaml(data_dir, methods)
    if extra.startswith("sampling"):
        text = text.replace("sampling: {n_samples: 1, length: 16, nfe: [2]}", extra)
    else:
        text += extra + "\n"
    path = write_suite(tmp_path, text)
    out = tmp_path / "out"
    with pytest.raises(SuiteError, match=match) as err:
        suite, src = load_suite(path)
        plan_suite(suite, src, out=out)
    assert str(path) in str(err.value)                 # the error names the suite file
    assert not out.exists()                            # nothing was trained or written


def test_cli_prints_a_bad_suite_as_one_line(tmp_path, data_dir, capsys):
    path = write_suite(tmp_path, suite_yaml(data_dir, GOOD_METHODS, "judges: [no_such_judge]"))
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: suite ") and "judges[0]" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_set_routes_suite_fields_and_run_config_keys(tmp_path, data_dir):
    suite, _ = load_suite(write_suite(tmp_path, suite_yaml(data_dir, GOOD_METHODS)),
                          ["budget.tokens=1000", "sampling.nfe=[3,5]", "model.n_layer=1"])
    assert suite.budget.kind == "tokens" and suite.budget.steps == 0    # the file's budget is replaced
    assert suite.sampling.nfe == [3, 5]
    assert suite.shared[-1] == "model.n_layer=1"
    with pytest.raises(SuiteError, match="did you mean 'sampling'"):
        load_suite(write_suite(tmp_path, suite_yaml(data_dir, GOOD_METHODS)), ["samplng.n_samples=2"])


def test_token_budget_becomes_steps_of_each_methods_batch(tmp_path, data_dir):
    methods = GOOD_METHODS.replace("shakespeare_char_ar}", "shakespeare_char_ar, overrides: [train.batch_size=8]}")
    suite, src = load_suite(write_suite(tmp_path, suite_yaml(data_dir, methods)), ["budget.tokens=1000"])
    plan = plan_suite(suite, src, out=tmp_path / "out")
    # 1000 tokens / (4 windows × 32 tokens) → 8 steps; / (8 × 32) → 4 steps (rounded up)
    assert [m.cfg.train.max_steps for m in plan.methods] == [8, 4]
    assert all(m.cfg.train.max_minutes == 0 and m.cfg.seed == suite.seed for m in plan.methods)


def test_unequal_sizes_are_reported_not_changed(tmp_path, data_dir):
    methods = GOOD_METHODS.replace("shakespeare_char_ar}", "shakespeare_char_ar, overrides: [model.n_layer=1]}")
    suite, src = load_suite(write_suite(tmp_path, suite_yaml(data_dir, methods)))
    plan = plan_suite(suite, src, out=tmp_path / "out")
    masked, ar = plan.methods
    assert ar.cfg.model.n_layer == 1 and masked.cfg.model.n_layer == 4       # nothing was adjusted
    assert masked.params > 1.25 * ar.params
    assert len(plan.warnings) == 1 and "parameter counts differ" in plan.warnings[0]
    assert "masked" in plan.warnings[0] and "ar" in plan.warnings[0]


def test_shipped_suites_load():
    assert {"shakespeare_char", "tiny"} <= set(suite_names())
    default, _ = load_suite("shakespeare_char")
    assert default.budget.minutes == 8 and default.sampling.nfe == [16, 64, 256]
    assert default.judges == ["smollm2"]
    names = {m.name for m in default.methods}
    assert {"masked_ddit", "ar_gpt", "embedding_ddit", "note000_ddit"} <= names
    from thunderdlm.config import load_yaml
    for m in default.methods:              # every method's preset exists and parses
        assert load_yaml(m.preset)["process"]["name"]


# ---- manifest and results ------------------------------------------------------------------------

def test_manifest_round_trips(tmp_path):
    suite, src = load_suite("tiny")
    from thunderdlm.config import to_dict
    manifest = collect_manifest(to_dict(suite), src, suite.seed)
    assert manifest.torch and manifest.python and manifest.hardware.cpu_count >= 1
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest
    results = BenchResults(manifest=manifest, methods=[{"name": "x", "likelihood": {"exact": True}}],
                           warnings=["w"], reference="x", actions={"x": "cached"})
    assert load_results(write_results(results, tmp_path)) == results
    assert load_results(tmp_path) == results                           # the folder works too


# ---- the tiny suite end to end -----------------------------------------------------------------------

def checkpoint_files(run: Path) -> dict[str, int]:
    """Every file under the run's checkpoints with its modification time (ns)."""
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("bench_out") / "tiny"
    assert main(["bench", "tiny", "--out", str(out), "--quiet", "--set", f"data.dir={data_dir}"]) == 0
    return out, load_results(out)      # the first run's results (later tests rewrite results.json)


def test_tiny_suite_writes_results_report_and_plots(tiny_run):
    tiny_run, res = tiny_run
    for name in ("results.json", "results.md", "bound_vs_time.png", "quality_vs_nfe.png",
                 "methods/masked_ddit.json", "methods/ar_gpt.json"):
        assert (tiny_run / name).is_file(), name
    for png in ("bound_vs_time.png", "quality_vs_nfe.png"):
        assert (tiny_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [m["name"] for m in res.methods] == ["masked_ddit", "ar_gpt"]
    assert res.actions == {"masked_ddit": "trained, measured", "ar_gpt": "trained, measured"}
    assert res.reference == "ar_gpt"
    masked, ar = res.method("masked_ddit"), res.method("ar_gpt")
    assert ar["likelihood"]["exact"] and not masked["likelihood"]["exact"]
    assert ar["ratio_to_ar"] == 1.0
    assert masked["ratio_to_ar"] == pytest.approx(masked["likelihood"]["nats_per_char"] / ar["likelihood"]["nats_per_char"])
    for m in (masked, ar):
        state = read_state(list_checkpoints(Path(m["run_dir"]))[-1])
        assert m["training"]["steps"] == state["step"] == 10
        assert m["training"]["tok_s"] == pytest.approx(state["tokens"] / state["train_seconds"])
        assert m["likelihood"]["stderr_per_char"] > 0 and m["likelihood"]["windows"] == 16
        assert [s["steps"] for s in m["samples"]] == [4, 16]
        assert all(s["sampling_tokens_per_s"] > 0 and 0 < s["metrics"]["unigram_entropy"] for s in m["samples"])
        assert [c["step"] for c in m["curve"]] == [5, 10]              # the trainer's periodic evals
    assert all(1 <= s["nfe"] <= s["steps"] for s in masked["samples"])   # diffusion: NFE ≤ steps (cache)
    assert [s["nfe"] for s in ar["samples"]] == [32, 32]                # AR: one per token
    md = (tiny_run / "results.md").read_text()
    assert "| masked_ddit | masked | ddit |" in md and "| ar_gpt | autoregressive | gpt |" in md
    assert "(bound)" in md and "(exact)" in md and "ratio to AR (ar_gpt)" in md
    assert res.manifest.seed == 1337 and res.manifest.suite["name"] == "tiny"


def test_rerun_reuses_runs_and_measurements(tiny_run, data_dir):
    tiny_run, _ = tiny_run
    runs = {n: tiny_run / "runs" / n for n in ("masked_ddit", "ar_gpt")}
    before = {n: checkpoint_files(r) for n, r in runs.items()}
    saved = {n: (tiny_run / "methods" / f"{n}.json").read_text() for n in runs}
    args = ["bench", "tiny", "--out", str(tiny_run), "--quiet", "--set", f"data.dir={data_dir}"]
    assert main(args) == 0
    assert load_results(tiny_run).actions == {"masked_ddit": "cached", "ar_gpt": "cached"}
    assert {n: checkpoint_files(r) for n, r in runs.items()} == before          # no training at all
    assert {n: (tiny_run / "methods" / f"{n}.json").read_text() for n in runs} == saved
    assert main(args + ["--force", "--only", "ar_gpt"]) == 0                     # measure again, no training
    res = load_results(tiny_run)
    assert res.actions == {"ar_gpt": "reused, measured"} and len(res.methods) == 2
    assert {n: checkpoint_files(r) for n, r in runs.items()} == before


def test_measurements_saved_before_a_config_field_existed_stay_current(tiny_run, data_dir):
    """A field added to the config schema later, at its default, does not make saved measurements
    stale (they are still what that config measures); a changed value does."""
    import json
    tiny_run, _ = tiny_run
    path = tiny_run / "methods" / "ar_gpt.json"
    original = path.read_text()
    record = json.loads(original)
    record["settings"]["config"]["train"].pop("distributed")        # as written before it existed
    path.write_text(json.dumps(record))
    stored_cfg = tiny_run / "runs" / "ar_gpt" / "config.json"
    stored = stored_cfg.read_text()
    cfg = json.loads(stored)
    cfg["train"].pop("distributed")                                 # the run folder's too
    stored_cfg.write_text(json.dumps(cfg))
    args = ["bench", "tiny", "--out", str(tiny_run), "--quiet", "--set", f"data.dir={data_dir}"]
    try:
        assert main(args) == 0
        assert load_results(tiny_run).actions["ar_gpt"] == "cached"
        record["settings"]["config"]["train"]["distributed"] = "fsdp"   # a value that differs
        path.write_text(json.dumps(record))
        assert main(args) == 0
        assert load_results(tiny_run).actions["ar_gpt"] != "cached"
    finally:
        path.write_text(original)
        stored_cfg.write_text(stored)


def test_changed_config_is_not_reused_silently(tiny_run, data_dir, capsys):
    tiny_run, _ = tiny_run
    args = ["bench", "tiny", "--out", str(tiny_run), "--quiet", "--set", f"data.dir={data_dir}"]
    trained_lr = load_config("shakespeare_char").train.lr      # the tiny suite's masked method's preset
    assert main(args + ["--only", "masked_ddit", "--set", "train.lr=0.00123"]) == 2
    assert f"different config (train.lr: {trained_lr} → 0.00123)" in capsys.readouterr().err


def test_partial_run_resumes_to_a_larger_budget(tmp_path, data_dir):
    args = ["bench", "tiny", "--out", str(tmp_path / "o"), "--quiet", "--only", "ar_gpt",
            "--set", f"data.dir={data_dir}"]
    assert main(args + ["--set", "budget.steps=5"]) == 0
    run = tmp_path / "o" / "runs" / "ar_gpt"
    assert read_state(list_checkpoints(run)[-1])["step"] == 5
    assert main(args) == 0                                                        # the suite's 10 steps
    assert load_results(tmp_path / "o").actions == {"ar_gpt": "resumed, measured"}
    assert read_state(list_checkpoints(run)[-1])["step"] == 10
    with pytest.raises(SuiteError, match="larger budget"):                       # 10 > 3: not reusable
        suite, src = load_suite("tiny", [f"data.dir={data_dir}", "budget.steps=3"])
        from thunderdlm.bench import run_suite
        run_suite(plan_suite(suite, src, out=tmp_path / "o"), only=["ar_gpt"], log=lambda s: None)


# ---- prompted continuations ----------------------------------------------------------------------

from thunderdlm.judges.base import Judge as _Judge


class _UniformCharJudge(_Judge):
    """A judge stand-in with one token per character, each of probability 1/V:
    nats(text) = len(text)·log V, through the real ``Judge.score``."""

    name = "uniform30"
    window = stride = 10_000

    def __init__(self, V=30):
        self.V = V

    def encode(self, text):
        return [ord(c) for c in text]

    def token_logprobs(self, x, mask):
        import math
        return torch.full(x.shape, -math.log(self.V), dtype=torch.float64)


def test_every_run_scores_real_held_out_text_as_its_own_row(tiny_run, data_dir):
    """Issue 19: a judge figure for real text comes from the run itself — the reference row is
    measured on every run (cached methods included), with the samples' window length, and the
    report shows it beside the samples."""
    from thunderdlm.bench import run_suite
    from thunderdlm.bench.measure import real_text_windows
    from thunderdlm.data import TokenData

    tiny_run, _ = tiny_run
    suite, src = load_suite("tiny", [f"data.dir={data_dir}"])
    suite.judges = ["uniform30"]
    judge = _UniformCharJudge(30)
    plan = plan_suite(suite, src, out=tiny_run, judge_loader=lambda spec, device: judge)
    res = run_suite(plan, log=lambda s: None)
    (ref,) = res.real_text
    n, length = suite.sampling.n_samples, suite.sampling.length
    assert (ref["data"], ref["windows"], ref["length"]) == (str(data_dir), n, length)
    texts = real_text_windows(data_dir, n, length)
    val = TokenData(data_dir).split("val")
    assert texts[0] == TokenData(data_dir).tokenizer.decode(val[:length].tolist())   # real val text
    assert ref["chars"] == sum(len(t) for t in texts)
    assert ref["judges"]["uniform30"]["nats_per_char"] == pytest.approx(math.log(30))
    md = (tiny_run / "results.md").read_text()
    assert f"| real held-out text ({data_dir}, {n} windows) |" in md
    assert load_results(tiny_run).real_text == res.real_text


def test_conditional_nll_is_the_continuations_share_of_the_joint_nats():
    import math
    from thunderdlm.bench.measure import conditional_nll

    out = conditional_nll(_UniformCharJudge(30), ["abc", "hello there"], ["de", "world!"])
    assert out["chars"] == 8 and out["nats_per_char"] == pytest.approx(math.log(30))


def test_forcing_vs_teacher_suite_reports_continuations_side_by_side(tmp_path, data_dir):
    """Diffusion forcing and its teacher-forcing switch on one tiny GPT, with continuations: every
    method continues the same held-out prompts; the report tabulates and shows them together."""
    tiny = "[model.n_layer=1, model.n_head=2, model.n_embd=24, process.sampling_timesteps=4, process.timesteps=8, process.decode_level=0]"
    methods = (f"  - {{name: tf, preset: shakespeare_char_df, overrides: {tiny[:-1]}, process.use_diffusion_forcing=false]}}\n"
               f"  - {{name: df, preset: shakespeare_char_df, overrides: {tiny}}}")
    extra = "continuations: {n: 3, context: 12, span: 6, steps: 6, batch_size: 2, examples: 2}\neval: {windows: 4, t_samples: 1}"
    path = write_suite(tmp_path, suite_yaml(data_dir, methods, extra))
    out = tmp_path / "out"
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 0
    res = load_results(out)
    tf, df = res.method("tf"), res.method("df")
    assert tf["likelihood"]["exact"] and not df["likelihood"]["exact"]
    for m in (tf, df):
        c = m["continuations"]
        assert (c["n"], c["context"], c["span"]) == (3, 12, 6) and c["sampling_tokens_per_s"] > 0
        assert 0 <= c["bleu"] <= 100 and 0 <= c["exact_match_chars"] <= 1
        assert 0 <= c["real_word_fraction"] <= 1 or math.isnan(c["real_word_fraction"])
        assert len(c["examples"]) == 2 and all(len(e["prompt"]) == 12 for e in c["examples"])
    assert tf["continuations"]["nfe"] == 6                           # AR: one evaluation per token
    assert [e["prompt"] for e in tf["continuations"]["examples"]] == \
           [e["prompt"] for e in df["continuations"]["examples"]]     # the same prompts for both
    md = (out / "results.md").read_text()
    assert "## Prompted continuations" in md and "| tf |" in md and "| df |" in md
    assert "(the real continuation)" in md and "**Prompt 2**" in md and "*df:*" in md


def test_speed_quality_suite_writes_the_frontier_for_every_method(tmp_path, data_dir):
    """AR, block diffusion and masked diffusion continue the same prompts at batch 1 and 2; the
    frontier has a row per (method, setting, batch) with speed, tokens per call and quality."""
    tiny = "model.n_layer=1, model.n_head=2, model.n_embd=24, model.cond_dim=8"
    methods = (f"  - {{name: ar, preset: shakespeare_char_ar, overrides: [{tiny}]}}\n"
               f"  - {{name: block4, preset: shakespeare_char_block, overrides: [{tiny}]}}\n"
               f"  - {{name: masked, preset: shakespeare_char, overrides: [{tiny}]}}")
    extra = ("frontier: {n: 3, prompt_chars: 8, new_chars: 8, batch: 2, thresholds: [0.5], masked_block: 4}\n"
             "eval: {windows: 4, t_samples: 1}")
    out = tmp_path / "out"
    assert main(["bench", str(write_suite(tmp_path, suite_yaml(data_dir, methods, extra))),
                 "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "frontier.json").read_text())["rows"]
    got = {(r["run"], r["label"], r.get("batch")) for r in rows}
    assert got == {("ar", "real continuation", None),
                   ("ar", "AR, KV cache", 1), ("ar", "AR, KV cache", 2),
                   ("block4", "τ=0.5", 1), ("block4", "τ=0.5", 2),
                   ("block4", "1 token/call", 1), ("block4", "1 token/call", 2),
                   ("masked", "τ=0.5, blocks of 4", 1), ("masked", "τ=0.5, blocks of 4", 2),
                   ("masked", "τ=0.5, blocks of 4, prefix cache", 1),
                   ("masked", "τ=0.5, blocks of 4, prefix cache", 2),
                   ("masked", "τ=0.5, blocks of 4, dual cache", 1),
                   ("masked", "τ=0.5, blocks of 4, dual cache", 2)}
    for r in rows:
        if "batch" in r:
            assert r["tokens_per_s"] > 0 and r["new_tokens"] == 8
            assert r["example"][0] == rows[0]["example"][0] if "example" in rows[0] else True
    ar1 = next(r for r in rows if r["run"] == "ar" and r.get("batch") == 1)
    assert ar1["tokens_per_call"] == pytest.approx(1.0) and ar1["nfe"] == 3 * 8
    fast = [r for r in rows if r["label"].startswith("τ=0.5")]
    assert all(1.0 <= r["tokens_per_call"] <= 4.0 for r in fast)      # at most a block per call
    assert "| block4 | τ=0.5 | 1 |" in (out / "frontier.md").read_text()
    assert (out / "frontier.png").stat().st_size > 0


def test_shipped_speed_quality_suite_names_its_methods():
    suite, _ = load_suite("speed_quality")
    assert [m.name for m in suite.methods] == ["ar", "block4", "block16", "masked"]
    assert suite.frontier.n == 16 and suite.frontier.thresholds == [0.07, 0.1, 0.5, 0.7, 0.9]
    assert suite.frontier.masked_thresholds == [0.5, 0.9]


def test_masked_runs_take_their_own_thresholds():
    from thunderdlm.bench.frontier import settings
    from thunderdlm.bench.suite import FrontierSettings

    s = FrontierSettings(n=1, thresholds=[0.1, 0.9], masked_thresholds=[0.5])
    masked = [r.get("threshold") for r in settings("masked", s)]
    assert masked == [0.5, 0.5, 0.5]               # τ = 0.5, then the prefix and dual caches
    assert [r.get("threshold") for r in settings("block", s)] == [0.1, 0.9, None]
    both = FrontierSettings(n=1, thresholds=[0.1, 0.9])
    assert [r.get("threshold") for r in settings("masked", both)] == [0.1, 0.9, 0.9, 0.9]
