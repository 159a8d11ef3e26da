"""Check the zoo: every diffusers denoiser class is covered, builds, runs, is deterministic and depends on t.

Run from the repository root (the zoo is a package under the ``tests`` namespace package):

    .venv/bin/python -m tests.zoo.check_zoo [CLASS_NAME_SUBSTRING ...]

For each class of ``denoiser_classes()``: it must be in ZOO or NOT_DENOISERS. ZOO entries are built twice (identical
weights?), their inputs built twice (identical?), and run under ``torch.no_grad()`` at the first and the middle
timestep of ``timesteps(10)``, the first one twice: outputs finite, the repeated forward identical, the two
timesteps' outputs different. One line per class, then a summary. Exit status 1 if anything failed.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
import warnings
from typing import Any

import torch

from . import registry
from .registry import NOT_DENOISERS, ZooModel, denoiser_classes, output_tensor

BUILD_BUDGET_S = 1.0
FORWARD_BUDGET_S = 0.5


def _same(a: Any, b: Any) -> bool:
    """Deep equality of input structures (tensors compared exactly, dtype and shape included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a).__module__.startswith("diffusers"):  # e.g. a KV-cache object: fresh each call, compare its contents
        return type(a) is type(b) and _same(vars(a), vars(b))
    return bool(a == b)


def _same_weights(m1: torch.nn.Module, m2: torch.nn.Module) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def check(entry: ZooModel) -> tuple[bool, str]:
    t0 = time.perf_counter()
    model = entry.build()
    build_s = time.perf_counter() - t0
    model2 = entry.build()
    problems: list[str] = []
    if not _same_weights(model, model2):
        problems.append("build() not deterministic")
    del model2
    if model.training:
        problems.append("model in training mode")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes - {torch.float32}:
        problems.append(f"parameter dtypes {sorted(map(str, dtypes))}")
    n_params = sum(p.numel() for p in model.parameters())

    ts = entry.timesteps(10)
    if len(ts) != 10:
        problems.append(f"timesteps(10) gave {len(ts)} values")
    t_first, t_mid = ts[0], ts[len(ts) // 2]
    if not _same(entry.inputs(t_first), entry.inputs(t_first)):
        problems.append("inputs(t) not deterministic")

    fwd_times = []
    with torch.no_grad():
        outs = []
        for t in (t_first, t_first, t_mid):
            kwargs = entry.inputs(t)
            t1 = time.perf_counter()
            out = output_tensor(model(**kwargs))
            fwd_times.append(time.perf_counter() - t1)
            outs.append(out.detach().float())
    a, a2, b = outs
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        problems.append("non-finite output")
    if a.shape != a2.shape or not torch.equal(a, a2):
        problems.append("forward not deterministic")
    scale = max(a.abs().max().item(), 1e-12)
    rel = (a - b).abs().max().item() / scale if a.shape == b.shape else math.inf
    if not rel > 1e-5:
        problems.append(f"output does not depend on t (rel diff {rel:.1e})")
    if a.ndim == 0 or a.shape[0] != entry.batch:
        problems.append(f"output batch {a.shape[0]} != entry.batch {entry.batch}")

    fwd_s = min(fwd_times)
    slow = []
    if build_s > BUILD_BUDGET_S:
        slow.append(f"build {build_s:.2f}s > {BUILD_BUDGET_S}s")
    if fwd_s > FORWARD_BUDGET_S:
        slow.append(f"forward {fwd_s:.2f}s > {FORWARD_BUDGET_S}s")
    status = "FAIL" if problems else ("SLOW" if slow else "ok")
    detail = "; ".join(problems + slow)
    line = (f"{status:4s} {entry.name:42s} build {build_s:5.2f}s  fwd {fwd_s:5.3f}s  params {n_params:>9,d}  "
            f"batch {entry.batch}  t0={t_first.flatten()[0].item():g} tmid={t_mid.flatten()[0].item():g} "
            f"rel-dt {rel:.2e}  out {tuple(a.shape)}" + (f"  [{detail}]" if detail else ""))
    return not problems, line


def main(argv: list[str]) -> int:
    threads = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--threads=")), 1)
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    filters = [a for a in argv if not a.startswith("-")]
    start = time.perf_counter()
    classes = denoiser_classes()
    zoo: dict[str, ZooModel] = registry.ZOO
    print(f"{len(classes)} classes enumerated, {len(zoo)} ZOO entries, {len(NOT_DENOISERS)} NOT_DENOISERS")
    n_ok = n_fail = n_not = n_missing = 0
    for name in classes:
        if filters and not any(f.lower() in name.lower() for f in filters):
            continue
        if name in NOT_DENOISERS:
            if name in zoo:
                print(f"FAIL {name:42s} both in ZOO and NOT_DENOISERS")
                n_fail += 1
            else:
                print(f"not  {name:42s} {NOT_DENOISERS[name]}")
                n_not += 1
            continue
        if name not in zoo:
            print(f"MISS {name:42s} neither in ZOO nor in NOT_DENOISERS")
            n_missing += 1
            continue
        try:
            ok, line = check(zoo[name])
        except Exception as exc:  # report and go on with the next class
            first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            ok, line = False, f"FAIL {name:42s} {type(exc).__name__}: {first_line}"
            if "-v" in argv:
                traceback.print_exc()
        print(line, flush=True)
        n_ok += ok
        n_fail += not ok
    extra = sorted(set(zoo) - set(classes)) + sorted(set(NOT_DENOISERS) - set(classes))
    for name in extra:
        print(f"FAIL {name:42s} in the zoo but not an enumerated class")
    n_fail += len(extra)
    print(f"summary: {n_ok} ZOO entries pass, {n_fail} fail, {n_missing} missing, {n_not} NOT_DENOISERS; "
          f"wall {time.perf_counter() - start:.1f}s")
    return 1 if (n_fail or n_missing) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
