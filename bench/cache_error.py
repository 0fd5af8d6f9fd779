"""The error of Fast-dLLM's approximate caches against the exact path, on a plain masked run.

``process.prefix_cache`` and ``process.dual_cache`` reuse keys and values computed at a block's
first step while the block changes, so their logits drift from the exact bidirectional forward.
This decodes ``--n`` held-out prompts (the frontier's prompts) in blocks of ``--block`` tokens at
threshold ``--tau`` with each cache, and at every network call also runs the exact forward on the
same canvas. Per cache it reports, over the still-masked positions of the calls after a block's
first one (the first is exact by construction):

- the mean and the 95th percentile of KL(exact ‖ cached) per position (nats), and
- the share of positions whose most likely token is the same;

and over whole decodes, the share of generated tokens equal to the exact path's for the same seed,
with the network calls (NFE) of both.

    python bench/cache_error.py runs/final_masked --out docs/results/speed_quality/cache_error.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import thunderdlm
from thunderdlm.bench.frontier import prompts
from thunderdlm.bench.manifest import write_bench_json
from thunderdlm.runtime import setup_runtime


def instrument(lm, log: list[dict]) -> None:
    """Wrap the process's network call: after the cached logits, the exact ones on the same x."""
    process, inner = lm.process, lm.process._network_logits

    def network_logits(model, x, lo, hi, t, ctx):
        first = not any(k in ctx.cache for k in ("prefix_kv", "dual_kv"))
        approx = inner(model, x, lo, hi, t, ctx)                                  # (B, S, V+1)
        sigma = process.conditioning(torch.full((x.shape[0],), t, device=x.device))
        exact = model(x, sigma)[:, lo:hi]
        masked = x[:, lo:hi] == process.mask_id                                   # (B, S)
        keep = torch.arange(exact.shape[-1], device=x.device) != process.mask_id  # drop the mask
        p_log = torch.log_softmax(exact[..., keep].float(), -1)
        q_log = torch.log_softmax(approx[..., keep].float(), -1)
        kl = (p_log.exp() * (p_log - q_log)).sum(-1)                              # (B, S)
        same = p_log.argmax(-1) == q_log.argmax(-1)
        log.append({"first": first, "kl": kl[masked].tolist(), "same": same[masked].tolist()})
        return approx

    process._network_logits = network_logits


def decode(lm, texts: list[str], new_tokens: int, block: int, tau: float, seed: int):
    """Tokens (n, new_tokens) and total NFE, one prompt at a time (batch 1)."""
    rows, nfe = [], 0
    for i, text in enumerate(texts):
        ids = lm.tokenizer.encode(text)
        x = torch.tensor([ids + [0] * new_tokens])
        editable = torch.zeros_like(x, dtype=torch.bool)
        editable[:, len(ids):] = True
        res = lm.sample_tokens(x, editable, steps=new_tokens, seed=seed + i, threshold=tau,
                               remasking="low_confidence", block_length=block)
        rows.append(res.tokens[0, len(ids):])
        nfe += res.nfe
    return torch.stack(rows), nfe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a plain masked-diffusion run folder")
    ap.add_argument("--n", type=int, default=8, help="held-out prompts")
    ap.add_argument("--prompt-chars", type=int, default=128)
    ap.add_argument("--new-chars", type=int, default=128)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/cache_error.json")
    args = ap.parse_args()
    setup_runtime(args.threads)
    exact_lm = thunderdlm.load(args.run)
    if exact_lm.process.name != "masked":
        raise SystemExit(f"{args.run} is a {exact_lm.process.name!r} run; the approximate caches "
                         "are for plain masked diffusion")
    texts, _ = prompts(exact_lm, args.n, args.prompt_chars, args.new_chars)
    new_tokens = len(exact_lm.tokenizer.encode("x" * args.new_chars))
    ref, ref_nfe = decode(exact_lm, texts, new_tokens, args.block, args.tau, args.seed)
    res = {"run": args.run, "n": args.n, "block": args.block, "tau": args.tau,
           "exact_nfe": ref_nfe, "caches": {}}
    for name in ("prefix", "dual"):
        lm = thunderdlm.load(args.run, overrides=[f"process.{name}_cache=true"])
        log: list[dict] = []
        instrument(lm, log)
        tokens, nfe = decode(lm, texts, new_tokens, args.block, args.tau, args.seed)
        later = [r for r in log if not r["first"]]
        kl = torch.tensor([v for r in later for v in r["kl"]] or [0.0])
        same = torch.tensor([v for r in later for v in r["same"]] or [True])
        first_kl = max((v for r in log if r["first"] for v in r["kl"]), default=0.0)
        res["caches"][name] = {
            "calls": len(log), "calls_after_first": len(later), "positions": int(kl.numel()),
            "kl_mean": float(kl.mean()), "kl_p95": float(kl.quantile(0.95)),
            "argmax_agreement": float(same.float().mean()), "first_call_max_kl": first_kl,
            "tokens_equal_to_exact": float((tokens == ref).float().mean()), "nfe": nfe}
        c = res["caches"][name]
        print(f"{name} cache: KL(exact‖cached) mean {c['kl_mean']:.4f} p95 {c['kl_p95']:.4f} nats, "
              f"argmax agreement {c['argmax_agreement']:.1%}, tokens equal to the exact path "
              f"{c['tokens_equal_to_exact']:.1%} (NFE {nfe} vs {ref_nfe})")
    write_bench_json(res, args.out, Path(__file__).resolve().parent)


if __name__ == "__main__":
    main()
