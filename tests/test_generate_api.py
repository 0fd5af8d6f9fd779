"""``generate()`` in the field's terms: transformers' and LLaDA's arguments for every process, lists
of prompts, stop strings / EOS, classifier-free guidance, and ``loglikelihood``, on tiny runs."""
import json
import math

import pytest
import torch

import thunderdlm
from thunderdlm.errors import SamplingError
from thunderdlm.run_config import RunConfig
from thunderdlm.sampling.guidance import Guided
from thunderdlm.train import Trainer

TEXT = "to be or not to be, that is the question.\n"
GPT = {"name": "gpt", "causal": True, "pos_emb": "learned"}
PROCESSES = {        # name: (process, backbone, training steps)
    "masked": ({"name": "masked"}, {"name": "ddit"}, 300),
    "block": ({"name": "block", "block_size": 4}, {"name": "ddit"}, 2),
    "uniform": ({"name": "uniform"}, {"name": "ddit"}, 2),
    "sedd_absorb": ({"name": "score_entropy", "graph": "absorb"}, {"name": "ddit"}, 2),
    "sedd_uniform": ({"name": "score_entropy", "graph": "uniform", "noise": "geometric"},
                     {"name": "ddit"}, 2),
    "embedding": ({"name": "embedding"}, {"name": "ddit"}, 2),
    "forcing": ({"name": "forcing"}, {"name": "gpt", "causal": True}, 2),
    "autoregressive": ({"name": "autoregressive"}, GPT, 150),
}
GUIDED = ("masked", "block", "sedd_absorb")        # the processes with a mask token


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from thunderdlm.data import prepare_data
    root = tmp_path_factory.mktemp("genapi")
    (root / "c.txt").write_text(TEXT * 200)
    data = prepare_data(root / "d", source=None, paths=[str(root / "c.txt")], tokenizer="char")
    out = {}
    for name, (process, model, steps) in PROCESSES.items():
        cfg = RunConfig.from_data({
            "data": {"dir": str(data), "seq_len": 32}, "process": process,
            "model": {**model, "n_layer": 1, "n_head": 2, "n_embd": 16, "cond_dim": 16},
            "train": {"batch_size": 16, "max_steps": steps, "lr": 1e-2, "eval_interval": 0,
                      "ckpt_interval": steps}})
        Trainer(cfg, root / name, show=False).fit()
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def lms(runs):
    return {name: thunderdlm.load(path) for name, path in runs.items()}


# ---- the transformers call pattern -----------------------------------------------------------------

@pytest.mark.parametrize("name", list(PROCESSES))
def test_transformers_call_pattern_greedy_is_deterministic(lms, name):
    lm = lms[name]
    a = lm.generate("to be", max_new_tokens=8, num_return_sequences=2, do_sample=False, steps=8)
    b = lm.generate("to be", max_new_tokens=8, num_return_sequences=2, do_sample=False, steps=8)
    assert a == b and len(a) == 2
    assert all(t.startswith("to be") and 5 < len(t) <= 13 for t in a)


@pytest.mark.parametrize("name", ["masked", "block", "autoregressive"])
def test_greedy_is_temperature_zero_and_do_sample_true_samples(lms, name):
    lm = lms[name]
    greedy = lm.generate("to be", max_new_tokens=8, n=2, do_sample=False, steps=8, seed=4)
    assert greedy == lm.generate("to be", max_new_tokens=8, n=2, temperature=0.0, steps=8, seed=4)
    sampled = [lm.generate("to be", max_new_tokens=8, n=2, do_sample=True, temperature=1.5,
                           steps=8, seed=s) for s in (1, 2)]
    assert sampled[0] != sampled[1]


def test_llada_names_are_ours(lms):
    lm = lms["masked"]
    llada = lm.generate("to be", gen_length=8, steps=8, block_length=4, temperature=0.0,
                        remasking="low_confidence", cfg_scale=0.0, seed=0)
    ours = lm.generate("to be", max_new_tokens=8, steps=8, block_length=4, temperature=0.0,
                       remasking="random", seed=0)
    assert llada == lm.generate("to be", max_new_tokens=8, steps=8, block_length=4,
                                temperature=0.0, remasking="low_confidence", seed=0)
    assert len(llada[0]) == len(ours[0]) == 13
    assert lm.generate("to be", max_new_tokens=6, stop_strings=["q"], n=2, seed=1) == \
        lm.generate("to be", max_new_tokens=6, stop="q", num_return_sequences=2, seed=1)


@pytest.mark.parametrize("kwargs, names", [
    (dict(max_new_tokens=8, gen_length=9), ("max_new_tokens", "gen_length")),
    (dict(max_new_tokens=8, n=2, num_return_sequences=3), ("'n'", "num_return_sequences")),
    (dict(max_new_tokens=8, stop=["a"], stop_strings=["b"]), ("'stop'", "stop_strings")),
    (dict(max_new_tokens=8, do_sample="no"), ("do_sample",)),
    (dict(max_new_tokens=8, do_sample=True, temperature=0.0), ("temperature", "do_sample=False")),
    (dict(max_new_tokens=8, cfg_scale=-1.0), ("cfg_scale",)),
    (dict(max_new_tokens=8, cfg_scale=float("nan")), ("cfg_scale",)),
    (dict(max_new_tokens=8, remasking="low_conf"), ("remasking",)),
    (dict(max_new_tokens=8, num_return_sequences=0), ("num_return_sequences",)),
    (dict(gen_length=2.5), ("gen_length",)),
    (dict(max_new_tokens=8, stop_strings=5), ("stop_strings",)),
])
def test_bad_or_conflicting_arguments_are_named(lms, kwargs, names):
    with pytest.raises(SamplingError) as err:
        lms["masked"].generate("to be", **kwargs)
    assert all(n in str(err.value) for n in names)


def test_agreeing_aliases_are_accepted(lms):
    texts = lms["masked"].generate("to be", max_new_tokens=4, gen_length=4, n=2,
                                   num_return_sequences=2, seed=0)
    assert len(texts) == 2 and all(len(t) == 9 for t in texts)


# ---- stopping --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["masked", "block", "autoregressive", "uniform"])
def test_stop_string_cuts_the_same_text(lms, name):
    lm = lms[name]
    kw = dict(max_new_tokens=12, n=1, steps=12, seed=3, remasking="low_confidence")
    (full,) = lm.generate("to be", **kw)
    stop = full[5 + 2]                                        # the third generated character
    (cut,) = lm.generate("to be", stop=[stop, "\x00never"], **kw)
    assert cut == full[:5 + full[5:].index(stop)]


def test_eos_ends_the_text(lms, monkeypatch):
    lm = lms["autoregressive"]
    kw = dict(max_new_tokens=12, steps=12, seed=3, n=2)
    full = lm.generate("to be", **kw)
    eos = lm.tokenizer.encode(full[0][7])[0]
    monkeypatch.setattr(lm.tokenizer, "eos_id", eos)
    cut = lm.generate("to be", **kw)
    ch = lm.tokenizer.decode([eos])
    for f, c in zip(full, cut):
        assert c == f[:5 + f[5:].index(ch)] if ch in f[5:] else c == f


# ---- lists of prompts ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PROCESSES))
def test_a_list_of_prompts_is_prompt_major_and_batch_independent(lms, name):
    lm = lms[name]
    prompts = ["to be", "or not to", ""]
    kw = dict(max_new_tokens=6, num_return_sequences=2, steps=6, seed=5)
    texts = lm.generate(prompts, **kw)
    assert len(texts) == 6
    for i, p in enumerate(prompts):
        rows = texts[2 * i:2 * i + 2]
        assert all(t.startswith(p) and len(t) == len(p) + 6 for t in rows)
        assert lm.generate([p], **kw) == rows                        # alone = in the list
        assert lm.generate([p, "that is"][::-1], **kw)[2:] == rows   # other mates, other place
    greedy = lm.generate(prompts, max_new_tokens=6, do_sample=False, steps=6)
    assert greedy == lm.generate(prompts, max_new_tokens=6, do_sample=False, steps=6)


@pytest.mark.parametrize("name", ["masked", "block", "autoregressive"])
def test_stop_strings_cut_every_row_of_a_list(lms, name):
    lm, prompts = lms[name], ["to be", "or not to"]
    kw = dict(max_new_tokens=12, num_return_sequences=2, steps=12, seed=3, remasking="low_confidence")
    full = lm.generate(prompts, **kw)
    stop = full[0][5 + 2]
    cut = lm.generate(prompts, stop_strings=[stop], **kw)
    for r, (f, c) in enumerate(zip(full, cut)):
        p = prompts[r // 2]
        assert c == (f[:len(p) + f[len(p):].index(stop)] if stop in f[len(p):] else f)


@pytest.mark.parametrize("name", ["masked", "block", "autoregressive"])
def test_a_list_is_one_batch_and_its_first_samples_are_the_single_prompt_ones(lms, name):
    lm = lms[name]
    kw = dict(max_new_tokens=8, steps=8, seed=7)
    one, res1 = lm.sample(["to be, or"], **kw)
    texts, res = lm.sample(["to be, or", "that is"], **kw)       # lengths 9, 7; a block grid of 4
    if name != "block":                 # one batch (block diffusion groups by length mod 4)
        assert res.nfe == res1.nfe
    assert texts[0] == one[0]
    assert [lm.generate(p, **kw)[0] for p in ("to be, or", "that is")] == texts


def test_a_list_needs_max_new_tokens(lms):
    with pytest.raises(SamplingError, match="max_new_tokens"):
        lms["masked"].generate(["to be", "or"], length=5)
    with pytest.raises(SamplingError, match="prompt"):
        lms["masked"].generate([], max_new_tokens=5)
    with pytest.raises(SamplingError, match="prompt"):
        lms["masked"].generate(["to be", 3], max_new_tokens=5)


# ---- classifier-free guidance ----------------------------------------------------------------------

class Toy(torch.nn.Module):
    """Logits that read the input, sigma and every keyword argument's shape (B rows each)."""

    def __init__(self, V=7):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(V + 1, V, generator=torch.Generator().manual_seed(0)))
        self.calls = []

    def forward(self, x, sigma=None, **kw):
        self.calls.append((x.shape[0], {k: getattr(v, "shape", v) for k, v in kw.items()}))
        out = self.table[x] + self.table[torch.roll(x, 1, 1)].cumsum(1) * 0.1
        return out if sigma is None else out * (1 + sigma.reshape(x.shape[0], -1)[..., None])


def test_guidance_formula_and_scale_zero_is_the_model():
    torch.manual_seed(0)
    model, B, L, null = Toy(), 3, 6, 7
    x = torch.randint(0, 7, (B, L))
    known = torch.zeros(B, L, dtype=torch.bool)
    known[:, :2] = True
    sigma = torch.rand(B)
    assert torch.equal(Guided(model, known, null, 0.0)(x, sigma), model(x, sigma))
    w = 1.5
    cond, uncond = model(x, sigma), model(x.masked_fill(known, null), sigma)
    got = Guided(model, known, null, w)(x, sigma)
    assert torch.allclose(got, uncond + (w + 1) * (cond - uncond), atol=1e-6)
    model.calls.clear()                  # per-row arguments doubled, shared ones kept
    valid = torch.ones(B, L, dtype=torch.bool)
    Guided(model, known, null, w)(x[:, :4], sigma, valid=valid[:, :4], attn_mask=torch.ones(4, 4).bool(),
                                  positions=torch.arange(4))
    rows, shapes = model.calls[-1]
    assert rows == 2 * B and shapes["valid"] == (2 * B, 4) and shapes["attn_mask"] == (4, 4)
    assert shapes["positions"] == (4,)


@pytest.mark.parametrize("name", GUIDED)
def test_cfg_scale_zero_is_unguided_and_guidance_keeps_the_prompt(lms, name):
    lm = lms[name]
    kw = dict(max_new_tokens=8, n=2, steps=8, seed=2)
    plain, res = lm.sample("to be", **kw)
    zero, res0 = lm.sample("to be", cfg_scale=0.0, **kw)
    assert plain == zero and torch.equal(res.tokens, res0.tokens)
    guided, resg = lm.sample("to be", cfg_scale=2.0, **kw)
    assert all(t.startswith("to be") and len(t) == 13 for t in guided)
    assert resg.nfe == res.nfe                      # one doubled batch per network evaluation


def test_guidance_changes_the_samples_of_a_trained_run(lms):
    lm = lms["masked"]
    kw = dict(max_new_tokens=8, n=4, steps=8, seed=2)
    assert lm.generate("to be or", cfg_scale=3.0, **kw) != lm.generate("to be or", **kw)
    # a list under guidance, prompts of two lengths in one padded batch: each prompt as alone
    both, res = lm.sample(["to be", "that is"], cfg_scale=1.0, **kw)
    assert both[:4] == lm.generate(["to be"], cfg_scale=1.0, **kw)
    assert both[4:] == lm.generate(["that is"], cfg_scale=1.0, **kw)
    assert res.nfe == lm.sample(["to be"], cfg_scale=1.0, **kw)[1].nfe     # one batch, not two runs


@pytest.mark.parametrize("name", ["autoregressive", "uniform", "sedd_uniform", "embedding", "forcing"])
def test_guidance_without_a_mask_token_is_refused_by_name(lms, name):
    with pytest.raises(SamplingError, match="cfg_scale.*no mask token"):
        lms[name].generate("to be", max_new_tokens=4, cfg_scale=1.0)


# ---- loglikelihood ---------------------------------------------------------------------------------

def test_autoregressive_loglikelihood_is_the_sum_of_token_log_probs(lms):
    lm = lms["autoregressive"]
    ctx, cont = "to be or not", " to be"
    res = lm.loglikelihood(ctx, cont)
    ids = lm.tokenizer.encode(ctx + cont)
    P = len(lm.tokenizer.encode(ctx))
    by_hand, greedy = 0.0, True
    with torch.no_grad():
        for i in range(P, len(ids)):                         # each token from its prefix alone
            logits = lm.process.logits(lm.model, torch.tensor([ids[:i + 1]]))[0, i].double()
            by_hand += logits.log_softmax(-1)[ids[i]].item()
            greedy &= int(logits.argmax()) == ids[i]
    assert res["exact"] and res["stderr"] == 0 and res["tokens"] == len(ids) - P
    assert res["loglikelihood"] == pytest.approx(by_hand, abs=1e-5)     # fp32 forwards of other lengths
    assert res["is_greedy"] == greedy


class Positional(torch.nn.Module):
    """A denoiser that ignores the tokens: position i predicts softmax(table[i]) (SUBS drops the
    mask's column), so log p(a | c) = Σ_i log q_i(a_i) exactly and the bound is tight."""

    def __init__(self, L, V):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(L, V + 1, generator=torch.Generator().manual_seed(1)))

    def forward(self, x, sigma=None, positions=None, **kw):
        pos = torch.arange(x.shape[1]) if positions is None else positions
        return self.table[pos].expand(x.shape[0], -1, -1)


@pytest.mark.parametrize("time_conditioning", [False, True])
@pytest.mark.parametrize("name", ["masked", "block"])
def test_llada_estimator_is_unbiased_on_an_exact_model(lms, name, time_conditioning):
    from thunderdlm.config import from_dict
    from thunderdlm.loglikelihood import conditional_loglikelihood
    from thunderdlm.processes import ProcessConfig, build_process
    lm = lms[name]
    process = build_process(from_dict(ProcessConfig, {**PROCESSES[name][0],
                                                      "time_conditioning": time_conditioning}),
                            lm.process.vocab_size)
    V, L = lm.process.vocab_size, 20
    model = Positional(L, V)
    x = torch.randint(0, V, (L,), generator=torch.Generator().manual_seed(2)).tolist()
    P = 7                                               # not on block diffusion's grid of 4
    q = model.table[:, :V].double().log_softmax(-1)
    exact = sum(q[i, x[i]].item() for i in range(P, L))
    res = conditional_loglikelihood(process, model, x[:P], x[P:], mc_num=2048, batch_size=64,
                                    generator=torch.Generator().manual_seed(0))
    assert res.tokens == L - P and not res.exact and res.stderr > 0
    assert abs(res.loglikelihood - exact) < 4 * res.stderr + 1e-9


@pytest.mark.parametrize("time_conditioning", [False, True])
@pytest.mark.parametrize("name", ["masked", "block"])
def test_without_context_the_estimator_is_the_process_nelbo(lms, runs, name, time_conditioning):
    # for a time-agnostic network E_l[(A/l) Σ_{|S|=l} CE] = ∫ w(t) E[Σ_masked CE] dt (masking
    # probability t: P(l | t) integrates against 1/t to 1/l), so with an empty context the two
    # Monte Carlo estimators of the (per-block) bound agree in expectation
    lm, text = lms[name], "to be or not to be, that"
    if time_conditioning:                  # the process's own form of the bound (σ(t) fed)
        lm = thunderdlm.load(runs[name], overrides=["process.time_conditioning=true"])
    ll = lm.loglikelihood("", text, mc_num=512, batch_size=128, seed=1)
    (nll,) = lm.nll(text, t_samples=512, seed=2)
    se = math.hypot(ll["stderr"], nll["stderr"] * nll["tokens"])
    assert ll["tokens"] == nll["tokens"] and ll["context_tokens"] == 0
    assert abs(ll["loglikelihood"] + nll["nats_total"]) < 4 * se


@pytest.mark.parametrize("A, B", [(16, 32), (10, 4), (24, 128), (7, 32), (32, 32), (5, 1)])
def test_every_row_count_is_uniform_over_k(A, B):
    # unbiased per row: over k = 1..A each row's count takes every value 1..A once (LLaDA's
    # half-to-even rounding gives half the rows even counts only at A = 16, B = 32); and for
    # every k the batch is spread evenly over 1..A
    from thunderdlm.loglikelihood import cover_counts
    table = torch.stack([cover_counts(k, A, B) for k in range(1, A + 1)])        # (A, B)
    assert all(sorted(table[:, j].tolist()) == list(range(1, A + 1)) for j in range(B))
    for row in table:
        hist = torch.bincount(row - 1, minlength=A)
        assert int(hist.max()) - int(hist.min()) <= 1 if B >= A else int(hist.max()) == 1


def test_a_perfect_predictor_scores_zero(lms, oracle_model):
    from thunderdlm.loglikelihood import conditional_loglikelihood
    lm = lms["masked"]
    x = torch.randint(0, lm.process.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    model = oracle_model(x.repeat(16, 1), lm.process.model_vocab_size, confidence=60.0)
    res = conditional_loglikelihood(lm.process, model, x[0, :5].tolist(), x[0, 5:].tolist(),
                                    mc_num=64, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert res.loglikelihood == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["masked", "autoregressive"])
def test_the_context_makes_the_right_continuation_likelier(lms, name):
    lm = lms[name]
    right, wrong = lm.loglikelihood([("to be or not to", " be, that"), ("to be or not to", " qqqqqqqq")],
                                    mc_num=64, batch_size=32)
    assert right["loglikelihood"] > wrong["loglikelihood"] + 4 * (right["stderr"] + wrong["stderr"])
    assert right["tokens"] == wrong["tokens"] == 9 and right["context_tokens"] == 15
    again = lm.loglikelihood("to be or not to", " be, that", mc_num=64, batch_size=32)
    assert again == right                                                # seeded


def test_loglikelihood_splits_like_lm_eval_and_names_bad_input(lms):
    lm = lms["masked"]
    res = lm.loglikelihood("to be or ", "not", mc_num=8)      # the space moves to the continuation
    assert res["tokens"] == 4 and res["context_tokens"] == 8
    with pytest.raises(SamplingError, match="empty"):
        lm.loglikelihood("to be", "")
    with pytest.raises(SamplingError, match="longer than the model's context"):
        lm.loglikelihood("to be " * 10, "or")
    with pytest.raises(SamplingError, match="mc_num"):
        lm.loglikelihood("to be", "or", mc_num=0)
    with pytest.raises(SamplingError, match="pairs"):
        lm.loglikelihood([("to be", 3)])
    with pytest.raises(SamplingError, match="nll"):
        lms["uniform"].loglikelihood("to be", " or")
    with pytest.raises(SamplingError, match="cfg_scale"):
        lms["autoregressive"].loglikelihood("to be", " or", cfg_scale=1.0)


def test_guided_loglikelihood_scale_zero_is_unguided(lms):
    lm = lms["block"]
    plain = lm.loglikelihood("to be or no", "t to be", mc_num=16, batch_size=8)
    assert plain == lm.loglikelihood("to be or no", "t to be", mc_num=16, batch_size=8, cfg_scale=0.0)
    guided = lm.loglikelihood("to be or no", "t to be", mc_num=16, batch_size=8, cfg_scale=1.0)
    assert math.isfinite(guided["loglikelihood"]) and guided != plain


# ---- the CLI ---------------------------------------------------------------------------------------

def test_cli_greedy_and_cfg_scale(runs, capsys):
    from thunderdlm.cli import main
    args = ["sample", str(runs["masked"]), "--prompt", "to be", "--max-new-tokens", "8", "--n", "2",
            "--greedy", "--cfg-scale", "1.5", "--json"]
    outs = []
    for _ in range(2):
        assert main(args) == 0
        outs.append(json.loads(capsys.readouterr().out)["samples"])
    assert outs[0] == outs[1] and all(t.startswith("to be") and len(t) == 13 for t in outs[0])
    assert main(["sample", str(runs["autoregressive"]), "--prompt", "to be", "--max-new-tokens", "4",
                 "--cfg-scale", "1"]) != 0
    assert "cfg_scale" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["masked", "block", "autoregressive"])
def test_cli_repeated_prompt_is_one_padded_batch_each_as_alone(runs, capsys, name):
    from thunderdlm.cli import main
    base = ["sample", str(runs[name]), "--max-new-tokens", "8", "--steps", "8", "--seed", "3", "--json"]
    alone = []
    for prompt in ("to be", "that is the"):
        assert main(base + ["--prompt", prompt]) == 0
        alone += json.loads(capsys.readouterr().out)["samples"]
    assert main(base + ["--prompt", "to be", "--prompt", "that is the"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == alone
    assert main(base + ["--prompt", "to be", "--prompt", "that", "--live"]) != 0
    assert "--live" in capsys.readouterr().err


def test_block_estimator_with_a_shifted_head_and_blocks_of_one_is_the_causal_lm(tmp_path):
    # an AR model made a block diffusion model (the hf adapter's shifted head): with blocks of one
    # token each block holds one masked token (l = A_b = 1, weight 1) whose prediction is read at
    # the clean output of the token before it — the causal LM's next-token distribution — so the
    # estimate is exact: Σ_i log p_LM(a_i | c, a_<i), equal to transformers' own logits
    from transformers import AutoModelForCausalLM
    from tests.tiny_pretrained import tiny_pretrained
    from thunderdlm.config import from_dict
    from thunderdlm.loglikelihood import conditional_loglikelihood
    from thunderdlm.models import ModelConfig, build_model
    from thunderdlm.processes import ProcessConfig, build_process
    state = torch.random.get_rng_state()
    vocab = tiny_pretrained(tmp_path)
    torch.random.set_rng_state(state)
    proc = build_process(from_dict(ProcessConfig, {"name": "block", "block_size": 1}), vocab)
    model = build_model(ModelConfig(name="hf", path=str(tmp_path), cond_dim=16, shift_logits=True,
                                    time_conditioning=False), proc.model_vocab_size, 64).eval()
    x = torch.randint(0, vocab, (14,), generator=torch.Generator().manual_seed(0))
    P = 5
    res = conditional_loglikelihood(proc, model, x[:P].tolist(), x[P:].tolist(), mc_num=8,
                                    batch_size=4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(tmp_path)(x[None]).logits[0].double()
    exact = logits.log_softmax(-1)[P - 1:-1].gather(-1, x[P:, None]).sum().item()
    assert res.stderr == pytest.approx(0.0, abs=1e-9)
    assert res.loglikelihood == pytest.approx(exact, abs=1e-4)
