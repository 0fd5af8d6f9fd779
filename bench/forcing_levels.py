"""Does a diffusion-forcing run use its context? Next-token prediction at every noise level.

For a run of the ``forcing`` process (diffusion forcing on): ``--windows`` validation windows of
``--context`` clean tokens and one more token, which is put at noise level k (for a list of levels)
while the context stays clean. For each k: the decoder's cross-entropy and argmax accuracy for that
token (at the top level the token's own vector is pure noise, so this is next-token prediction
from the context alone; teacher forcing's own number on the same windows is its validation loss),
and the same cross-entropy with the context taken from *another* window: if the two agree, the
network does not use its context. Also the accuracy of one token drawn by the run's own sampler
(``generate_df``) after the clean context. Writes JSON.

    python bench/forcing_levels.py bench/results/shakespeare_char/runs/df_gpt --out levels.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import thunderdlm
from thunderdlm.data import TokenData, eval_windows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a run folder of the forcing process with diffusion forcing on")
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lm = thunderdlm.load(args.run)
    proc, net = lm.process, lm.model
    if lm.cfg.process.name != "forcing" or not proc.df:
        raise SystemExit(f"{args.run}: not a diffusion-forcing run")
    torch.manual_seed(args.seed)
    w = eval_windows(TokenData(lm.cfg.data.dir).split("val"), args.context + 1, args.windows)
    dif, T = proc.diffusion, proc.cfg.timesteps
    table = net.token_table()
    foreign = torch.roll(w, 1, dims=0)                    # every window gets its neighbour's context
    levels = sorted({T - 1, *range(0, T, max(1, T // 8))}, reverse=True)
    rows = []
    with torch.no_grad():
        e, e_foreign = net.embed(w), net.embed(foreign)
        for k in levels:
            lv = torch.full(w.shape, -1)
            lv[:, -1] = k
            last = dif.q_sample(e[:, -1:], lv[:, -1:], torch.randn_like(e[:, -1:]))
            out = {}
            for name, ctx in (("own", e), ("foreign", e_foreign)):
                x = torch.cat([ctx[:, :-1], last], dim=1)
                pred = dif.predictions(net(x, lv), x, lv, table)
                logits = pred.decoder_logits(table)[:, -1]
                out[name] = (F.cross_entropy(logits, w[:, -1]).item(),
                             (logits.argmax(-1) == w[:, -1]).float().mean().item())
            snr = float(proc.tables.gather("snr", torch.tensor([k]), 0.0)[0])
            rows.append({"level": k, "snr": snr, "ce": out["own"][0], "accuracy": out["own"][1],
                         "ce_foreign_context": out["foreign"][0]})
            print(f"level {k:3d} (snr {snr:9.3g}): cross-entropy {out['own'][0]:.3f} "
                  f"(another window's context: {out['foreign'][0]:.3f}), accuracy {out['own'][1]:.3f}")
        toks, _ = proc.generate_df(net, w[:, :-1], 1, generator=torch.Generator().manual_seed(args.seed))
    sampled = (toks[:, -1] == w[:, -1]).float().mean().item()
    print(f"one token drawn by the sampler after the clean context: accuracy {sampled:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "run": str(args.run), "windows": args.windows, "context": args.context, "seed": args.seed,
            "levels": rows, "sampled_accuracy": sampled}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
