"""Where does an embedding-diffusion run's bound come from? Its terms, and the diffusion term over t.

For a run of the ``embedding`` process: the decoder and prior terms, and the diffusion integrand
h(t) = −½ SNR'(t) E‖x − x̂0(z_t)‖² (nats per token) on an evenly spaced grid of ``--points`` times
in (0, 1), on ``--windows`` validation windows; its grid mean is the diffusion term (a deterministic
quadrature, so two runs compared on the same windows differ by much less noise than the
Monte-Carlo bound of ``thunderdlm eval``). Prints the share of the bound from each tenth of (0, 1)
and writes JSON.

    python bench/bound_profile.py runs/shakespeare_char_embedding --out profile.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import thunderdlm
from thunderdlm.data import TokenData, eval_windows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a run folder of the embedding process")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lm = thunderdlm.load(args.run)
    if lm.cfg.process.name != "embedding":
        raise SystemExit(f"{args.run}: process {lm.cfg.process.name!r}; this profile is for 'embedding'")
    proc, net = lm.process, lm.model
    torch.manual_seed(args.seed)
    w = eval_windows(TokenData(lm.cfg.data.dir).split("val"), lm.cfg.data.seq_len, args.windows)
    w = w.to(next(net.parameters()).device)
    L = w.shape[1]
    ts = (np.arange(args.points) + 0.5) / args.points
    with torch.no_grad():
        x, e = net.clean_latents(w), net.latents()
        decoder = (proc.decoder_term(x, w, e) / L).mean().item()
        prior = (proc.prior_term(x) / L).mean().item()
        h = []
        for tv in ts:
            t = torch.full((w.shape[0],), float(tv), device=w.device)
            z, _ = proc.noisy(x, t)
            x0_hat = proc.predict(net, z, t, proc.self_condition(net, z, t))[1]
            h.append((proc.diffusion_term(x, x0_hat, t) / L).mean().item())
    h = np.array(h)
    diffusion = float(h.mean())
    cpt = TokenData(lm.cfg.data.dir).chars_per_token("val")
    total = decoder + prior + diffusion
    print(f"{args.run}: decoder {decoder:.4f} + prior {prior:.4f} + diffusion {diffusion:.4f} = "
          f"{total:.4f} nats/token ({total / cpt:.4f} nats/char)")
    tenths = [float(h[i * args.points // 10:(i + 1) * args.points // 10].mean() / 10) for i in range(10)]
    for i, share in enumerate(tenths):
        print(f"  t in ({i / 10:.1f}, {(i + 1) / 10:.1f}]: {share:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "run": str(args.run), "windows": args.windows, "points": args.points, "seed": args.seed,
            "decoder": decoder, "prior": prior, "diffusion": diffusion, "nats_per_token": total,
            "nats_per_char": total / cpt, "by_tenth": tenths, "t": ts.tolist(), "integrand": h.tolist()},
            indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
