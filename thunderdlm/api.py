"""Python API: ``lm = thunderdlm.load(RUN)``, ``lm.generate(...)``, ``lm.nll(texts)``,
``lm.loglikelihood(context, continuation)``, ``lm.evaluate()``.

``load`` rebuilds the tokenizer, process and backbone from the run folder alone (config.json,
tokenizer/, the latest valid checkpoint) — no flags, no download; the loading is ``loading.py``.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import torch

from thunderdlm.data import TokenData, eval_windows
from thunderdlm.errors import CheckpointError, SamplingError
from thunderdlm.evaluate import likelihood_bound
from thunderdlm.loading import load_run
from thunderdlm.loglikelihood import check_conditional, conditional_loglikelihood
from thunderdlm.processes import SampleOptions
from thunderdlm.run_config import RunConfig
from thunderdlm.runfolder import RunFolder
from thunderdlm.sampling.loop import SampleResult, StepInfo, run_sampler
from thunderdlm.sampling.batched import sample_prompts
from thunderdlm.sampling.guidance import Guided, unconditional_token
from thunderdlm.sampling.requests import build_request, check_sample_args
from thunderdlm.sampling.rolling import StopRule, continue_tokens

REMASKING = ("ancestral", "low_confidence", "random")


def check_eval_args(*, t_samples: int = 1, seed: int, windows: int = 0, batch_size: int = 1,
                    mc_num: int = 1) -> None:
    """Likelihood arguments, checked before any work: a SamplingError naming the argument."""
    for name, value, lo in (("t_samples", t_samples, 1), ("windows", windows, 0),
                            ("batch_size", batch_size, 1), ("seed", seed, 0), ("mc_num", mc_num, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise SamplingError(f"argument '{name}' (--{name.replace('_', '-')}) must be an integer "
                                f"≥ {lo}, got {value!r}")


def _stops(value):
    """Stop strings as a list (a single string is one stop), None when not given."""
    return [value] if isinstance(value, str) else value


def _same(name: str, value, alias: str, alias_value):
    """One setting under two names (ours and transformers' / LLaDA's): either, or both equal."""
    if alias_value is None:
        return value
    if value is not None and value != alias_value:
        raise SamplingError(f"sampling arguments '{name}' and '{alias}' are the same setting and "
                            f"disagree ({value!r} vs {alias_value!r}); give one of them")
    return alias_value


class DiffusionLM:
    """A trained model with its tokenizer and process, ready to sample and score."""

    def __init__(self, run_dir: Path, cfg: RunConfig, model, process, tokenizer, device, checkpoint: Path):
        self.run_dir, self.cfg, self.model, self.process = run_dir, cfg, model, process
        self.tokenizer, self.device, self.checkpoint = tokenizer, device, checkpoint

    @property
    def context(self) -> int:
        """Longest sequence (in tokens) the model was trained on."""
        return self.cfg.data.seq_len

    # ---- sampling ----------------------------------------------------------------------------------
    def sample(self, prompt: str | list[str] | None = None, *, infill: str | None = None,
               length: int | None = None, max_new_tokens: int | None = None, n: int | None = None,
               steps: int = 64, seed: int | None = None, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, remasking: str = "ancestral", block_length: int | None = None,
               threshold: float | None = None, stop: list[str] | str | None = None,
               cfg_scale: float = 0.0, do_sample: bool | None = None,
               callback: Callable[[StepInfo], None] | None = None,
               num_return_sequences: int | None = None, gen_length: int | None = None,
               stop_strings: list[str] | str | None = None) -> tuple[list[str], SampleResult]:
        """Generate ``n`` texts per prompt; returns them with the raw result (tokens, NFE, tokens
        per call).

        ``max_new_tokens`` continues ``prompt`` by that many tokens, beyond the context too (the
        window rolls, ``sampling/rolling.py``), stopping early once every row has produced the
        tokenizer's EOS token or one of the ``stop`` strings (the texts are cut before them);
        ``steps`` is then shared out over the rounds. ``threshold`` τ: Fast-dLLM's parallel
        decoding (commit every position whose confidence exceeds τ, at least one per step).

        The names of transformers and LLaDA work too: ``num_return_sequences`` (= ``n``),
        ``gen_length`` (= ``max_new_tokens``), ``stop_strings`` (= ``stop``) — one of a pair, or
        both equal; ``do_sample=False`` is greedy decoding (temperature 0, and the process's other
        randomness — which positions a step reveals, the noise of continuous processes — from seed
        0 unless ``seed`` is given, so the same call gives the same text); ``cfg_scale`` w > 0 is
        LLaDA's classifier-free guidance (``sampling/guidance.py``; processes with a mask token).

        ``prompt`` may be a list of prompts (with ``max_new_tokens``): the texts come prompt-major,
        ``n`` rows per prompt, and a prompt's rows do not depend on the other prompts in the list
        (padded batches, ``sampling/batched.py``, every prompt with ``seed``; under guidance one
        prompt after another, each as ``sample(prompt)``)."""
        check_sample_args(steps=steps, n=1 if n is None else n, length=length,
                          max_new_tokens=max_new_tokens, seed=seed, temperature=temperature,
                          top_k=top_k, top_p=top_p, block_length=block_length, threshold=threshold,
                          prompt=prompt, infill=infill, stop=stop, cfg_scale=cfg_scale,
                          do_sample=do_sample, num_return_sequences=num_return_sequences,
                          gen_length=gen_length, stop_strings=stop_strings)
        n = _same("n", n, "num_return_sequences", num_return_sequences)
        n = 1 if n is None else n
        max_new_tokens = _same("max_new_tokens", max_new_tokens, "gen_length", gen_length)
        stop = _same("stop", _stops(stop), "stop_strings", _stops(stop_strings))
        if remasking not in REMASKING:
            raise SamplingError(f"--remasking must be one of {list(REMASKING)}, got {remasking!r}")
        if cfg_scale:
            unconditional_token(self.process)             # a process without a mask token: named
        if do_sample is False:                           # greedy: every draw an argmax, fixed seed
            temperature, seed = 0.0, 0 if seed is None else seed
        options = dict(temperature=temperature, top_k=top_k, top_p=top_p, remasking=remasking,
                       block_length=block_length, threshold=threshold, cfg_scale=cfg_scale)
        if isinstance(prompt, (list, tuple)):
            if max_new_tokens is None or infill is not None or length not in (None, max_new_tokens):
                raise SamplingError("a list of prompts is continued by max_new_tokens (or "
                                    "gen_length) tokens each: give it, without infill or a "
                                    "different length")
            return self._continue_batch(list(prompt), max_new_tokens, n=n, steps=steps, seed=seed,
                                        stop=stop, callback=callback, options=options)
        if max_new_tokens is not None:
            if infill is not None or (length is not None and length != max_new_tokens):
                raise SamplingError("max_new_tokens continues a prompt: give it without --infill "
                                    "and without a different --length")
            return self._continue(prompt or "", max_new_tokens, n=n, steps=steps, seed=seed,
                                  stop=stop, callback=callback, options=options)
        req = build_request(self.tokenizer, self.context, length=length, prompt=prompt, infill=infill, n=n)
        res = self.sample_tokens(req.x_init, req.editable, steps=steps, seed=seed, callback=callback,
                                 **options)
        return [self.tokenizer.decode(row.tolist()) for row in res.tokens.cpu()], res

    def _continue_batch(self, prompts: list[str], new_tokens: int, *, n: int, steps: int,
                        seed: int | None, stop: list[str] | None, callback,
                        options: dict) -> tuple[list[str], SampleResult]:
        """The prompts in padded batches (``sampling/batched.py``), every prompt with ``seed``; a
        row's tokens are those it gets in any other list (sample j ≥ 1 of a prompt draws from
        ``rng.row_seed(seed, j)``, so with n > 1 they differ from ``sample(prompt)``'s). Under
        classifier-free guidance each padded canvas gets its own ``Guided`` wrapper, hiding its
        known columns (prompts; pads, which no query sees anyway) in the unconditional pass."""
        rule = StopRule(self.tokenizer.eos_id, tuple(stop or ()))
        opts = SampleOptions(options["temperature"], options["top_k"], options["top_p"],
                             options["remasking"], options["threshold"])
        model = None
        if options["cfg_scale"]:
            null_id, scale = unconditional_token(self.process), options["cfg_scale"]

            def model(x_init: torch.Tensor, editable: torch.Tensor) -> Guided:
                return Guided(self.model, ~editable.bool(), null_id, scale)
        ids, res = sample_prompts(self, prompts, new_tokens=new_tokens, n=n,
                                  seeds=[seed] * len(prompts), steps=steps, options=opts,
                                  block_length=options["block_length"], stop=rule, callback=callback,
                                  model=model)
        texts = [prompts[r // n] + rule.cut_text(self.tokenizer.decode(row)) for r, row in enumerate(ids)]
        return texts, res

    def _continue(self, prompt: str, new_tokens: int, *, n: int, steps: int, seed: int | None,
                  stop: list[str] | str | None, callback, options: dict) -> tuple[list[str], SampleResult]:
        """``prompt`` + up to ``new_tokens`` tokens per row, rolling the window past the context."""
        ids = self.tokenizer.encode(prompt) if prompt else []
        if len(ids) >= self.context:
            raise SamplingError(f"the prompt has {len(ids)} tokens but the model's context is "
                                f"{self.context}; shorten the prompt")
        rule = StopRule(self.tokenizer.eos_id, tuple([stop] if isinstance(stop, str) else stop or ()))
        gen = self._generator(seed)
        grid = self.process.block_grid

        def run(x, editable, stop_fn):
            g = int(editable[0].sum())
            width = options["block_length"] or grid or g
            share = max(math.ceil(steps * g / new_tokens), math.ceil(g / width))
            return self.sample_tokens(x, editable, steps=share, generator=gen, callback=callback,
                                      stop=stop_fn, **options)

        prompt_ids = torch.tensor(ids, dtype=torch.long, device=self.device).repeat(n, 1)
        new, res = continue_tokens(run, prompt_ids, new_tokens, self.context, grid, rule,
                                   self.tokenizer.decode)
        texts = [prompt + rule.cut_text(self.tokenizer.decode(rule.cut_ids(row.tolist())))
                 for row in new.cpu()]
        return texts, res

    def _generator(self, seed: int | None) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else torch.seed() % 2**63)
        return gen

    def sample_tokens(self, x_init: torch.Tensor, editable: torch.Tensor, *, steps: int = 64,
                      seed: int | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      remasking: str = "ancestral", block_length: int | None = None,
                      threshold: float | None = None, cfg_scale: float = 0.0,
                      generator: torch.Generator | None = None,
                      callback: Callable[[StepInfo], None] | None = None,
                      stop: Callable[[torch.Tensor], bool] | None = None) -> SampleResult:
        """Run the sampler on token ids: x_init (B, L) with ``editable`` (B, L) marking what to generate
        (every other position is kept). The options are checked here, once for every caller.
        ``cfg_scale`` > 0 guides with the known positions (``~editable``) masked in the
        unconditional pass."""
        if remasking not in REMASKING:
            raise SamplingError(f"--remasking must be one of {list(REMASKING)}, got {remasking!r}")
        check_sample_args(steps=steps, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                          block_length=block_length, threshold=threshold, cfg_scale=cfg_scale)
        opts = SampleOptions(temperature, top_k, top_p, remasking, threshold)
        model = self.model
        if cfg_scale:
            model = Guided(self.model, ~editable.bool().to(self.device),
                           unconditional_token(self.process), cfg_scale)
        return run_sampler(self.process, model, x_init.to(self.device), editable.to(self.device),
                           steps=steps, block_length=block_length, options=opts,
                           generator=generator or self._generator(seed), callback=callback, stop=stop)

    def generate(self, prompt: str | list[str] | None = None, **kwargs) -> list[str]:
        """Texts only (prompt included), ``n`` / ``num_return_sequences`` per prompt, prompt-major
        for a list; see :meth:`sample` for the arguments. The call pattern of transformers works —
        ``generate(prompts, max_new_tokens=64, num_return_sequences=2, do_sample=False)`` — and
        LLaDA's (``gen_length``, ``steps``, ``block_length``, ``remasking``, ``cfg_scale``), but
        the answer is texts, not token ids (``sample`` also returns the ids)."""
        return self.sample(prompt, **kwargs)[0]

    def token_str(self, i: int) -> str:
        return self.tokenizer.token_str(i) if i < self.tokenizer.vocab_size else "▒"

    # ---- likelihood ----------------------------------------------------------------------------------
    @torch.no_grad()
    def nll(self, texts: list[str] | str, t_samples: int = 32, seed: int = 0) -> list[dict]:
        """Per text: NELBO (upper bound on NLL) in nats/token and bits/char, with its stderr."""
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise SamplingError(f"nll() takes a text or a list of texts, got {type(texts).__name__}")
        check_eval_args(t_samples=t_samples, seed=seed)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for text in texts:
            ids = self.tokenizer.encode(text)
            if not ids:
                raise SamplingError("cannot score an empty text")
            if len(ids) > self.context:
                raise SamplingError(f"text of {len(ids)} tokens is longer than the model's context "
                                    f"({self.context}); split it into shorter pieces")
            x0 = torch.tensor(ids, device=self.device).repeat(t_samples, 1)
            draws = self.process.nelbo(self.model, x0, gen).double()            # (t_samples,)
            nats = draws.mean().item()
            se = draws.std().item() / math.sqrt(t_samples) if t_samples > 1 else float("nan")
            total = nats * len(ids)
            out.append({"text": text, "tokens": len(ids), "nats_per_token": nats, "stderr": se,
                        "nats_total": total, "bits_per_char": total / max(len(text), 1) / math.log(2),
                        "exact": self.process.exact_likelihood})
        return out

    @torch.no_grad()
    def loglikelihood(self, context: str | list[tuple[str, str]], continuation: str | None = None, *,
                      mc_num: int = 128, batch_size: int = 32, cfg_scale: float = 0.0,
                      seed: int = 0) -> dict | list[dict]:
        """log p(continuation | context) in nats — lm-eval's ``loglikelihood`` request; a list of
        (context, continuation) pairs gives a list. Per pair: ``loglikelihood``, ``stderr``,
        ``tokens`` / ``context_tokens``, ``exact``, ``is_greedy`` (AR; None for diffusion).

        Exact for the autoregressive process; for masked and block diffusion LLaDA's Monte Carlo
        estimator over ``mc_num`` masked draws (``batch_size`` per forward) of a lower bound
        (``loglikelihood.py``); the other processes are refused by name (use ``nll()``).
        The pair is tokenized as lm-eval does: the context's trailing spaces move to the
        continuation, and the continuation is what ``encode(context + continuation)`` adds."""
        single = isinstance(context, str)
        pairs = [(context, continuation)] if single else context
        if not isinstance(pairs, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(t, str) for t in p)
                for p in pairs):
            raise SamplingError("loglikelihood() takes (context, continuation) strings or a list of "
                                "(context, continuation) pairs of strings")
        check_eval_args(seed=seed, batch_size=batch_size, mc_num=mc_num)
        check_sample_args(cfg_scale=cfg_scale)
        check_conditional(self.process, cfg_scale)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for ctx, cont in pairs:
            ctx_ids, cont_ids = self._encode_pair(ctx, cont)
            res = conditional_loglikelihood(self.process, self.model, ctx_ids, cont_ids, mc_num=mc_num,
                                            batch_size=batch_size, cfg_scale=cfg_scale, generator=gen,
                                            device=self.device)
            out.append({"context": ctx, "continuation": cont, **dataclasses.asdict(res)})
        return out[0] if single else out

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split: trailing spaces of the context go to the continuation; the continuation's
        ids are what encoding the whole adds after the context's."""
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        ctx_ids = self.tokenizer.encode(stripped) if stripped else []
        whole = self.tokenizer.encode(stripped + continuation)
        cont_ids = (whole[len(ctx_ids):] if whole[:len(ctx_ids)] == ctx_ids
                    else self.tokenizer.encode(continuation))
        if not cont_ids:
            raise SamplingError("loglikelihood(): the continuation is empty; give at least one token")
        if len(ctx_ids) + len(cont_ids) > self.context:
            raise SamplingError(f"loglikelihood(): context ({len(ctx_ids)} tokens) + continuation "
                                f"({len(cont_ids)}) is longer than the model's context "
                                f"({self.context}); shorten the context")
        return ctx_ids, cont_ids

    def evaluate(self, data_dir: str | None = None, windows: int = 0, t_samples: int = 4,
                 batch_size: int = 64, seed: int = 0) -> dict:
        """Validation bound over ``windows`` non-overlapping windows (0 = the whole split)."""
        check_eval_args(t_samples=t_samples, seed=seed, windows=windows, batch_size=batch_size)
        data = TokenData(data_dir or self.cfg.data.dir)
        RunFolder(self.run_dir).check_tokenizer(data)
        val = eval_windows(data.split("val"), self.context, windows or None).to(self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        res = likelihood_bound(self.process, self.model, val, t_samples=t_samples, batch_size=batch_size,
                               generator=gen, chars_per_token=data.chars_per_token("val"))
        return {"run": str(self.run_dir), "checkpoint": self.checkpoint.name, "data": str(data_dir or self.cfg.data.dir),
                "process": self.cfg.process.name, "model": self.cfg.model.name, **res}


def load(run: str | Path, checkpoint: str | None = None, device: str = "auto", ema: bool = True,
         overrides: list[str] | None = None) -> DiffusionLM:
    """Rebuild a trained model from its run folder (EMA weights when the run kept them).

    ``overrides`` (``key=value``) change the stored config before the model is built, e.g. a
    sampler setting (``process.scheduling_matrix=pyramid``); one that changes the network's shape
    fails with the checkpoint mismatch error. The loading itself is ``loading.load_run``."""
    if not isinstance(run, (str, Path)):
        raise CheckpointError(f"load() takes a run folder path (str or Path), got {run!r} "
                              f"({type(run).__name__})")
    loaded = load_run(run, checkpoint=checkpoint, device=device, ema=ema, overrides=overrides)
    return DiffusionLM(loaded.run_dir, loaded.cfg, loaded.model, loaded.process, loaded.tokenizer,
                       loaded.device, loaded.checkpoint)
