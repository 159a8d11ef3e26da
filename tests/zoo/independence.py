"""Per-sample decisions across the zoo: in a batch of two, each sample decides as it does alone.

For every zoo class with a batch of 2, a per-sample policy (``--policy``: FBCache by default, TeaCache with
fixed coefficients, DBCache, SpeCa; thresholds 0.05, 0.3, 1.0, warm-up 1; eager) runs on the batch and on each
sample alone (every input whose first dimension is the batch cut to that sample).
A sample's decisions in the batch must equal its decisions alone, and its outputs the alone run's (relative
1e-3: a batch of one may take other kernels). Runs stop at the first threshold where the two samples decide
differently (the case that tells a leak apart). A model whose stream is not laid out by sample decides once
per call (with a warning) and is reported as pooled; a model whose uncached outputs already differ between
the batch and a sample alone (its inputs do not cut per sample) shows an error with equal decisions.

    python -m tests.zoo.independence [--policy fbcache|teacache|dbcache|speca] [--budget 900] [--only Name,Name]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree

import graphcache

from .registry import ZOO, ZooModel, output_tensor

THRESHOLDS = (0.05, 0.3, 1.0)
# Each per-sample policy with its threshold left as ``{t}``.
POLICIES = {
    "fbcache": "fbcache{{threshold={t},warmup=1}}",
    "teacache": "teacache{{threshold={t},coefficients=[1.0,0.0],warmup=1}}",
    "dbcache": "dbcache{{fn=1,bn=1,threshold={t},warmup=1}}",
    "speca": "speca{{tau0={t},tau_min={t},warmup=1,num_steps=7}}",
}


def _cut(kwargs: dict[str, Any], k: int, batch: int) -> dict[str, Any]:
    """Sample ``k``'s inputs: tensors whose first dimension is the batch, and lists of one tensor per sample
    (Z-Image's ``x`` and ``cap_feats``), cut to that sample."""
    def cut(x: Any) -> Any:
        return x[k:k + 1] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == batch else x

    def per_sample_list(x: Any) -> bool:
        return isinstance(x, list) and len(x) == batch and all(isinstance(v, torch.Tensor) for v in x)

    kwargs = {name: [value[k]] if per_sample_list(value) else value for name, value in kwargs.items()}
    return pytree.tree_map(cut, kwargs)  # type: ignore[no-any-return]


def _run(entry: ZooModel, policy: str, sample: int | None) -> tuple[list[torch.Tensor], Any, bool]:
    torch._dynamo.reset()
    fast = graphcache.optimize(entry.build(), policy=policy, backend="eager")
    outs = []
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in entry.timesteps(7):
            kwargs = entry.inputs(t)
            if sample is not None:
                kwargs = _cut(kwargs, sample, entry.batch)
            outs.append(output_tensor(fast(**kwargs)).clone())
    pooled = any("per-sample decisions need" in str(w.message) for w in caught)
    return outs, fast, pooled


def check(entry: ZooModel, template: str = POLICIES["fbcache"]) -> list[str]:
    """One line per threshold tried: whether the samples decided apart, batch == alone, the output error."""
    lines = []
    for threshold in THRESHOLDS:
        policy = template.format(t=threshold)
        try:
            outs, fast, pooled = _run(entry, policy, None)
            if pooled:
                return [*lines, f"{threshold}: pooled (the stream is not laid out by sample)"]
            alone = [_run(entry, policy, k) for k in (0, 1)]
        except Exception as err:  # a refusal (or anything else) ends this model
            return [*lines, f"{threshold}: {type(err).__name__}: {str(err).splitlines()[0][:100]}"]
        alone_decisions = [graphcache.decisions(a[1]) for a in alone]
        same = fast.states[-1].sample_decisions() == alone_decisions
        err = max(float((out[k:k + 1] - a[0][i]).abs().max() / (a[0][i].abs().max() + 1e-6))
                  for k, a in enumerate(alone) for i, out in enumerate(outs))
        apart = alone_decisions[0] != alone_decisions[1]
        flag = "" if same and err < 1e-3 else "  <-- check"
        lines.append(f"{threshold}: decided apart {apart}, batch == alone {same}, rel. error {err:.1e}{flag}")
        if apart:
            break
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=900.0, help="seconds; stops after the model running then")
    parser.add_argument("--only", default="")
    parser.add_argument("--policy", default="fbcache", choices=sorted(POLICIES))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    start = time.time()
    names = [n for n in args.only.split(",") if n] or sorted(ZOO)
    for name in names:
        if time.time() - start > args.budget:
            print("time budget reached")
            break
        if ZOO[name].batch != 2:
            continue
        for line in check(ZOO[name], POLICIES[args.policy]):
            print(f"{name:40s} {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
