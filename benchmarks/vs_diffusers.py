"""graphcache side by side with diffusers' own cache hooks: same model, same method, settings mapped field by field.

A thin script over :mod:`graphcache.vs_diffusers` (also ``graphcache bench --against diffusers``): for each
(model, method), a real DDIM generation of ``--steps`` steps (batch 1) run by the uncached model compiled
(the baseline), diffusers' hooks eager, the same hooks under ``torch.compile``, and ``graphcache.optimize``
(Inductor, one graph). Printed: the per-step decisions of both sides (identical, or where and why they
differ), each mapping (exact or approximate, and how), then per row the wall ratio vs the baseline,
computed calls, % of the schedule's limit (ratio / (steps / computed)), graphs and graph breaks dynamo made,
the max error vs the uncached output and the max difference between diffusers' and graphcache's outputs.

Methods (diffusers config  ->  graphcache policy):
  fbcache          FirstBlockCacheConfig(threshold=T)  ==  fbcache{threshold=T,per_sample=false}
  taylorseer       TaylorSeerCacheConfig(cache_interval=N, disable_cache_before_step=W, max_order=1, attention +
                   MLP modules)  ~  taylorseer{interval=N,warmup=W+1,order=1} (graphcache also computes step W)
  taylorseer-lite  use_lite_mode=True  ~  lite=true (Flux only)
  magcache         MagCacheConfig(threshold, max_skip_steps, retention_ratio, num_inference_steps, mag_ratios)
                   ==  magcache{threshold,max_skips,retention,calibration}: the same ratios (graphcache's
                   calibration of the model over this loop) given to both
  pab              PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=R,
                   spatial_attention_timestep_skip_range=(lo, hi))  ==  pab{spatial=R,temporal=None,cross=None,
                   window_low=lo,window_high=hi}
  fastercache      FasterCacheConfig(..., is_guidance_distilled=True): the attention half only (diffusers ties
                   the rest to CFG)  ~  fastercache{spatial=R,temporal=None,cross=None,window_low=max(lo,0),...}

    python benchmarks/vs_diffusers.py                       # DiT 512x12 and Flux 4+8, 50 steps, N=2
    python benchmarks/vs_diffusers.py --models dit --methods fbcache magcache --steps 30
    python benchmarks/vs_diffusers.py --device cuda --dtype bfloat16 --models flux --flux 2,4,4096,12,128
"""

from __future__ import annotations

import argparse

import torch
from timing_lock import locked  # benchmarks/: one timed region at a time when two benchmarks share the GPU

import graphcache.vs_diffusers as vd
from graphcache.vs_diffusers import METHODS, MODELS, Settings, compare, flux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=None,
                        help="FBCache threshold (default: DiT 0.2, Flux 0.5: about 10-14 of 50 steps computed)")
    parser.add_argument("--interval", type=int, default=5, help="TaylorSeer cache_interval")
    parser.add_argument("--warmup", type=int, default=3, help="TaylorSeer disable_cache_before_step")
    parser.add_argument("--device", default="cpu", help="where to run (cuda: wall times synchronize the device)")
    parser.add_argument("--dtype", default=None, help="the models' dtype there, e.g. bfloat16 (default float32)")
    parser.add_argument("--flux", default=None, metavar="DUAL,SINGLE,TOKENS,HEADS,HEAD_DIM",
                        help="the Flux-shaped model's size (default 4,8,256,4,32: width 128)")
    args = parser.parse_args()
    settings = Settings(steps=args.steps, repeats=args.repeats, threshold=args.threshold, interval=args.interval,
                        warmup=args.warmup, device=args.device,
                        dtype=getattr(torch, args.dtype) if args.dtype else None)
    subjects = None
    if args.flux:
        dual, single, tokens, heads, head_dim = (int(v) for v in args.flux.split(","))
        subjects = {"flux": flux(dual, single, tokens, heads=heads, head_dim=head_dim)}
    vd.generate = locked(vd.generate)  # every generation, timed or compiling, holds GRAPHCACHE_TIMING_LOCK if set
    result = compare(args.models, args.methods, settings, status=lambda text: print(text, flush=True),
                     subjects=subjects)
    print("\ndecisions (C = computed, . = cached)")
    print("\n".join(result.decisions()))
    print("\nmappings")
    print("\n".join(f"- {line}" for line in result.notes()))
    for line in result.failures:
        print(f"not compared: {line}")
    print(f"\n{result.caption()}\n")
    print(result.table())


if __name__ == "__main__":
    main()
