"""The two kernel choices behind a per-block cached step's lowering, each timed both ways in one run.

1. Few-row linears (``passes/matvec_reductions.py``): the 36 matrix-vector products a 12-block DiT's per-block
   cached step recomputes (per block: timestep embedder 256->512 and 512->512, gate rows 512->1024), as BLAS
   ``addmm`` calls (eager and compiled) and as Inductor's multiply-and-sum reductions, for 1, 2, 4 and 8 rows.
2. Fusion width (``graphcache.INDUCTOR_OPTIONS``): TaylorSeer order 4's cached residual stream,
   ``h + sum_u g_u * (d0 + d1 k1 + d2 k2 + d3 k3 + d4 k4)`` over 24 units of [256, 512], compiled with Inductor's
   default fusion (one loop reading all 120 tensors) and with ``max_fusion_unique_io_buffers=8``.

Each figure is the fastest of 30 calls.

    python benchmarks/cached_step_kernels.py
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from graphcache.rewrite import INDUCTOR_OPTIONS


def fastest_ms(fn: Callable[[], Any], calls: int = 30) -> float:
    fn()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def matvecs() -> None:
    shapes = [(512, 256), (512, 512), (1024, 512)] * 12
    weights = [torch.randn(o, i) for o, i in shapes]
    biases = [torch.randn(o) for o, _ in shapes]
    mib = sum(w.numel() * w.element_size() for w in weights) / 2**20

    def blas(ws: list[torch.Tensor], xs: list[torch.Tensor], bs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.addmm(b, x, w.t()) for w, b, x in zip(ws, bs, xs, strict=True)]

    def reductions(ws: list[torch.Tensor], xs: list[torch.Tensor], bs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [(x[:, None, :] * w[None]).sum(-1) + b for w, b, x in zip(ws, bs, xs, strict=True)]

    compiled_blas, compiled_reductions = torch.compile(blas), torch.compile(reductions)
    print(f"36 few-row linears ({mib:.0f} MiB of weights), ms:")
    print("| rows | addmm, eager | addmm, Inductor | reductions, Inductor | ratio |")
    print("|---|---|---|---|---|")
    for rows in (1, 2, 4, 8):
        xs = [torch.randn(rows, i) for _, i in shapes]
        eager = fastest_ms(lambda xs=xs: blas(weights, xs, biases))
        inductor = fastest_ms(lambda xs=xs: compiled_blas(weights, xs, biases))
        reduced = fastest_ms(lambda xs=xs: compiled_reductions(weights, xs, biases))
        print(f"| {rows} | {eager:.2f} | {inductor:.2f} | {reduced:.2f} | {min(eager, inductor) / reduced:.2f}x |")


def forecast_chain() -> None:
    units, orders = 24, 5
    derivatives = [[torch.randn(1, 256, 512) for _ in range(orders)] for _ in range(units)]
    gates = [torch.randn(1, 1, 512) for _ in range(units)]
    h, k = torch.randn(1, 256, 512), torch.tensor([1.0, 0.5, 0.25, 0.125])

    def chain(h: torch.Tensor, ds: list[list[torch.Tensor]], gs: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        for d, g in zip(ds, gs, strict=True):
            h = h + g * (d[0] + c[0] * d[1] + c[1] * d[2] + c[2] * d[3] + c[3] * d[4])
        return h

    mib = units * orders * h.numel() * h.element_size() / 2**20
    default = torch.compile(chain, fullgraph=True)
    split = torch.compile(chain, fullgraph=True, options=INDUCTOR_OPTIONS)
    a = fastest_ms(lambda: default(h, derivatives, gates, k))
    b = fastest_ms(lambda: split(h, derivatives, gates, k))
    print(f"\nTaylorSeer order 4 residual chain, {units} units ({mib:.0f} MiB of derivatives), ms:")
    print(f"| Inductor default fusion | {INDUCTOR_OPTIONS} | ratio |\n|---|---|---|")
    print(f"| {a:.2f} | {b:.2f} | {a / b:.2f}x |")


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.no_grad():
        matvecs()
        forecast_chain()


if __name__ == "__main__":
    main()
