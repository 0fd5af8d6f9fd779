"""Several prompts sampled in one batch, each row exactly as it is sampled alone (issues 17, 18).

``sample_prompts(lm, prompts, new_tokens=…, n=…, seeds=…)`` continues every prompt by
``new_tokens`` tokens, ``n`` samples each. Row ``i·n + j`` (sample j of prompt i) gets exactly the
tokens that ``sample_prompts(lm, [prompts[i]], n=n, seeds=[seeds[i]])`` gives it, whatever else is
in the batch — for greedy and for seeded sampling (tested per process and setting).

Layout: left padding. A prompt-major canvas [pads | prompt | new tokens] in which every row's
generated columns are the same [start, start + new_tokens) (``requests.build_prompts_request``):

- the loop's blocks are column ranges shared by all rows (``loop.block_ranges``) and the masked
  step works on the union span of the block; with the generated regions aligned these are, for
  every row, the very blocks and span of its alone run (right padding would move each row's
  blocks and LLaDA's ``block_length`` cuts, and split the steps over different block sizes);
- each row keeps its own positions: ``positions`` (B, L) = column − pads (GPT's learned table,
  DDiT's rotary angles, the hf adapter's ``position_ids``), and its pads are hidden from every
  forward by the backbone's key-padding mask ``valid`` (B, L), also in the prefix / dual / block
  / AR KV caches (the cache's keys are the canvas columns, ``StepContext.forward_kwargs``);
- the AR baseline's BOS sits at each row's first real column (``AutoregressiveProcess.network_input``).

Block diffusion's grid is absolute in positions: column c of a row padded by p is position c − p,
so the loop's column grid is every row's position grid only when p is a multiple of the block
size g. Its rows get a grid-aligned canvas instead (``requests.build_grid_prompts_request``): row
r is padded on the left by whole blocks, pad_r = (K − ⌊p_r/g⌋)·g with K = max_r ⌊p_r/g⌋, so every
row's first generated token falls in column block K (at column K·g + p_r mod g) and column block
K + b is the row's own b-th block; rows that end earlier are padded on the right. The rows'
first and last blocks then hold different numbers of their tokens, so each row follows its own
schedule there (``loop.row_steps`` / ``_row_schedule``: its own steps per block, times t = 1 − j/spb_r
— per-row t, s tensors for the ancestral commit and a time-conditioned network's σ — LLaDA's
commit counts, threshold decoding's own K_r; a row past its schedule has nothing editable and
draws nothing) and draws only over its own span of the block (``rng.draw_spans``). One batch for
every prompt length — unless that canvas (K·g + max_r (p_r mod g) + new_tokens columns) exceeds
the context: then the rows are grouped by prompt length mod g (``grid_groups``; pads of whole
blocks need no alignment). A shifted head (an AR model read as a denoiser) reads position i − 1,
which for an empty prompt is a pad: empty prompts form a group of their own. Processes whose ``step`` does not thread the padding (``Process.pads_exactly`` False:
uniform, score-entropy, embedding, forcing — their steps draw over every column of the canvas,
whose width would then depend on the batch) are grouped by prompt length: no pads, and per-row
generators make their draws each row's own. No caller ever gets batch-dependent output.

Randomness: one ``torch.Generator`` per row (``thunderdlm/rng.py`` ``RowGenerators``); sample j of
a prompt seeded s uses ``rng.row_seed(s, j)`` (s itself for j = 0: one sample per prompt equals
the single-generator run with seed s, bit for bit); an unseeded prompt draws fresh seeds. Every
draw on the sampling path is made per row over that row's own span of the block (the columns all
rows share, or on a grid-aligned canvas its own part of them: ``rng.draw_spans``), and a row with
nothing left to decide in a step draws nothing, as it would alone. With n > 1
the rows j ≥ 1 of a seeded prompt differ from the single generator's (whose one (n, …) draw gave
row j the j-th slice of one stream): that draw order is inherently batch-dependent.

Float rounding: a padded row runs through batched matmuls of another shape than alone and its
attention sums over more (masked, exactly zero-weight) keys, so its logits are not bitwise the
alone ones: in fp32 on a CPU they agree to ~1e-6 (``tests/sampling/test_padded_layout.py``) and the
tokens are equal for every tested case. What such a difference can flip is a decision sitting on a
near-tie: a categorical draw at a boundary, or a confidence ranking (low_confidence, threshold) of
positions whose probabilities agree to ~1e-6 — seen with a random rotary network right after a
short prompt, where several masked positions predict the same token with nearly the same
probability; the tests' confidence cases therefore use learned positions.

Rows whose prompt + ``new_tokens`` exceed the context are continued per prompt by rolling the
window (``rolling.continue_tokens``, as ``DiffusionLM.sample(max_new_tokens=…)`` does), each round
a batch of that prompt's n rows with their own generators.

Stopping: each group's run stops after a block once every row of it has produced EOS or a stop
string (``StopRule``); a row's ids are cut before the first of them (``StopRule.cut_tokens``).
Later blocks never change earlier tokens, so a row's cut ids do not depend on its batch mates.

Callbacks (the server's per-step states): ``callback(info)`` gets the loop's ``StepInfo`` for each
step of each batch run, with ``info.rows`` the indices (into the returned list) of the canvas's
rows, ``info.start`` the first generated column (a tuple, one per row, on a block grid's aligned
canvas), ``info.length`` the tokens each row generates in the run and ``info.offset`` the tokens
that row generated in earlier rounds (0 unless rolled): row ``info.rows[b]``'s generated token
``offset + k`` is ``info.x[b, start + k]`` (``start[b] + k``; ``info.x0_hat`` likewise). Pads are
the columns before a row's prompt and, on an aligned canvas, after its last generated column.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from thunderdlm.errors import SamplingError
from thunderdlm.processes.base import SampleOptions
from thunderdlm.rng import RowGenerators, row_seed
from thunderdlm.sampling.loop import SampleResult, StepInfo, run_sampler
from thunderdlm.sampling.requests import (build_grid_prompts_request, build_prompts_request,
                                         check_sample_args)
from thunderdlm.sampling.rolling import StopRule, continue_tokens


def batch_key(process, model: nn.Module, prompt_length: int) -> tuple:
    """Rows with equal keys are sampled exactly together (see the module docstring)."""
    if not process.pads_exactly:
        return ("length", prompt_length)
    shifted = bool(getattr(model, "shifted_head", False))
    if shifted and prompt_length == 0:
        return ("empty",)
    return ("grid",) if process.block_grid else ("any",)


def grid_groups(members: list[int], lengths: list[int], new_tokens: int, grid: int,
                context: int) -> list[list[int]]:
    """A grid group's batch runs: one grid-aligned canvas (``build_grid_prompts_request``) when
    its width K·g + max(p mod g) + new_tokens fits the context (the network and its KV cache take
    at most ``context`` columns), else the prompts grouped by length mod g (each such canvas is
    no wider than its longest prompt + new_tokens)."""
    width = max(lengths[i] // grid for i in members) * grid + max(lengths[i] % grid for i in members)
    if width + new_tokens <= context:
        return [members]
    out: dict[int, list[int]] = {}
    for i in members:
        out.setdefault(lengths[i] % grid, []).append(i)
    return list(out.values())


def round_steps(steps: int, g: int, new_tokens: int, width: int) -> int:
    """Steps of a run that generates ``g`` of ``new_tokens`` tokens in blocks of ``width``: its share
    of ``steps``, at least one per block (``DiffusionLM.sample(max_new_tokens=…)``'s rule)."""
    return max(math.ceil(steps * g / new_tokens), math.ceil(g / width))


def sample_prompts(lm, prompts: list[str] | list[list[int]], *, new_tokens: int, n: int = 1,
                   seeds: list[int | None] | None = None, steps: int = 64,
                   options: SampleOptions | None = None, block_length: int | None = None,
                   stop: StopRule | None = None, callback: Callable[[StepInfo], None] | None = None,
                   model: nn.Module | Callable[[torch.Tensor, torch.Tensor], nn.Module] | None = None,
                   ) -> tuple[list[list[int]], SampleResult]:
    """Continue each prompt by ``new_tokens`` tokens, ``n`` samples each; returns the generated
    ids per row (prompt-major: row i·n + j is sample j of prompt i; the prompt excluded, cut at
    EOS / the stop strings of ``stop``, default: the tokenizer's EOS) and a result over all runs
    (``tokens`` (B, new_tokens): the generated region before cutting, 0 where a rolled row stopped
    early; ``nfe`` / ``steps`` / ``generated`` summed over the batch runs).

    ``prompts``: texts, or token-id lists (already encoded, e.g. by the server).
    ``seeds``: one per prompt (None: fresh); ``model``: the module to call (default ``lm.model``; a
    wrapper must pass the process's keyword arguments — ``valid``, ``positions``, caches — to the
    backbone), or a function ``(x_init, editable) -> module`` called for each batch run's canvas
    (B, L) (a wrapper that depends on the canvas: classifier-free guidance hides its prompt
    columns, ``sampling/guidance.py``). ``lm`` needs ``.model .process .tokenizer .context .device``."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise SamplingError("sampling argument 'prompt': give a non-empty list of prompts")
    seeds = [None] * len(prompts) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise SamplingError(f"sampling argument 'seed': {len(seeds)} seeds for {len(prompts)} prompts "
                            "(give one per prompt, None for a fresh one)")
    for i, p in enumerate(prompts):
        token_ids = isinstance(p, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in p)
        if not isinstance(p, str) and not token_ids:
            raise SamplingError(f"sampling argument 'prompt': prompt {i} must be a string (or a list "
                                f"of token ids), got {p!r} ({type(p).__name__})")
    check_sample_args(steps=steps, n=n, max_new_tokens=new_tokens, block_length=block_length)
    for s in seeds:
        check_sample_args(seed=s)
    model = lm.model if model is None else model
    network = model if isinstance(model, nn.Module) else None
    process, tok, context = lm.process, lm.tokenizer, lm.context
    options = options or SampleOptions()
    rule = stop if stop is not None else StopRule(tok.eos_id)
    ids = [list(p) if not isinstance(p, str) else tok.encode(p) if p else [] for p in prompts]
    for i, p in enumerate(ids):
        if len(p) >= context:
            raise SamplingError(f"prompt {i} has {len(p)} tokens but the model's context is "
                                f"{context}; shorten it")
    gens = [torch.Generator(device=lm.device).manual_seed(
        row_seed(s, j) if s is not None else torch.seed() % 2**63)
        for s in seeds for j in range(n)]
    width = block_length or process.block_grid or new_tokens
    share = round_steps(steps, new_tokens, new_tokens, width)
    out: list[list[int] | None] = [None] * (len(prompts) * n)
    region = torch.zeros(len(out), new_tokens, dtype=torch.long)
    nfe = done = generated = 0
    stopped = False

    def run(x, editable, stop_fn, rows, start, offset, steps_, length=None, **layout):
        gen = RowGenerators([gens[r] for r in rows])
        cb = None
        if callback is not None:
            def cb(info, rows=tuple(rows)):
                callback(dataclasses.replace(info, rows=rows, start=start, offset=offset, length=length))
        x, editable = x.to(lm.device), editable.to(lm.device)
        net = network if network is not None else model(x, editable)
        return run_sampler(process, net, x, editable, steps=steps_,
                           block_length=block_length, options=options, generator=gen, callback=cb,
                           stop=stop_fn, **{k: v.to(lm.device) for k, v in layout.items() if v is not None})

    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(ids):
        if len(p) + new_tokens <= context:
            groups.setdefault(batch_key(process, network or lm.model, len(p)), []).append(i)
    grid = process.block_grid
    runs = [part for key, members in groups.items()
            for part in (grid_groups(members, [len(p) for p in ids], new_tokens, grid, context)
                         if key == ("grid",) else [members])]
    for members in runs:
        prompt_ids = [ids[i] for i in members]
        req = (build_grid_prompts_request(prompt_ids, new_tokens, grid, n=n) if grid
               else build_prompts_request(prompt_ids, new_tokens, context, n=n))
        rows = [i * n + j for i in members for j in range(n)]
        starts = req.starts or [req.start] * len(rows)        # row b's token k: column starts[b] + k
        end = {"hi": req.x_init.shape[1]}                     # the columns decided (a stop cuts them)

        def stop_fn(x_now: torch.Tensor) -> bool:
            end["hi"] = x_now.shape[1]
            return all(rule.row_stopped(x_now[b, S:S + new_tokens].tolist(), tok.decode)
                       for b, S in enumerate(starts))

        res = run(req.x_init, req.editable, stop_fn if rule.active else None, rows,
                  req.start if req.starts is None else tuple(starts), 0, share, length=new_tokens,
                  valid=req.valid, positions=req.positions)
        nfe, done, generated = nfe + res.nfe, done + res.steps, generated + res.generated
        stopped |= res.stopped
        for b, (r, S) in enumerate(zip(rows, starts)):
            # a stopped run decided every row's columns before end["hi"] (the last block's end)
            kept = min(new_tokens, max(end["hi"] - S, 0)) if res.stopped else new_tokens
            new = res.tokens[b, S:S + kept].cpu()                               # (kept,)
            region[r, :kept] = new
            out[r] = rule.cut_tokens(new.tolist(), tok.decode)

    for i, p in enumerate(ids):                   # past the context: roll the window per prompt
        if len(p) + new_tokens <= context:
            continue
        rows = list(range(i * n, i * n + n))
        state = {"offset": 0}

        def roll(x, editable, stop_fn, rows=rows, state=state):
            g = int(editable[0].sum())
            start = int(editable[0].float().argmax())
            res = run(x, editable, stop_fn, rows, start, state["offset"],
                      round_steps(steps, g, new_tokens, block_length or process.block_grid or g))
            state["offset"] += g
            return res

        prompt = torch.tensor(p, dtype=torch.long, device=lm.device).repeat(n, 1)
        new, res = continue_tokens(roll, prompt, new_tokens, context, process.block_grid, rule,
                                   tok.decode)
        nfe, done, generated = nfe + res.nfe, done + res.steps, generated + res.generated
        stopped |= res.stopped
        for b, r in enumerate(rows):
            region[r, :new.shape[1]] = new[b].cpu()
            out[r] = rule.cut_tokens(new[b].tolist(), tok.decode)
    return out, SampleResult(region, nfe, done, generated, stopped)
