"""Run the zoo under graphcache's policies: each (model, policy) is supported with exact computed steps, or
refused with a named reason. Anything else (a wrong computed step, a stale second generation, a cache that
never caches, an exception that is not a GraphcacheError, a recompile, a static schedule's cached step that did
not run by the cached-step graph, on one graph or in the cached region of a model split by graph breaks) is a
failure.

``python -m tests.zoo.matrix [--steps 7] [--only Name,Name] [--markdown docs/support_matrix.md]`` from the
repository root prints one line per case and the counts; the test suite runs the same cases (tests/test_zoo.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

import graphcache
from graphcache import calibration
from graphcache.backend import make_backend
from graphcache.errors import GraphcacheError, PassError
from graphcache.host_schedule import DYNAMIC, HostSchedule
from graphcache.passes.cost import graph_flops

from .registry import ZOO, ZooModel, output_tensor

# The three policies of the support matrix, set so that caching happens on a 7-step run whatever the model:
# a static reuse, a dynamic decision (threshold high: every step after the warm-up caches) and a forecast.
POLICIES: dict[str, str] = {
    "fora": "fora{interval=3}",
    "fbcache": "fbcache{threshold=1000.0,warmup=2}",
    "taylorseer-lite": "taylorseer{lite=true,interval=3,warmup=1,order=1}",
}
# The rest of the policies over the zoo, each set so that caching happens on a 7-step run (windows open on
# every timestep convention, thresholds that always reuse after the warm-up, MagCache with flat ratios written
# for each model by :func:`policy_spec`). Not in the suite:
# ``python -m tests.zoo.matrix --policies extra`` (or ``all``, or names from both tables).
EXTRA_POLICIES: dict[str, str] = {
    "fora-block": "fora{interval=3,granularity=block}",
    "taylorseer": "taylorseer{interval=3,warmup=1,order=2}",
    "foca": "foca{interval=3,warmup=2}",
    "hicache-lite": "hicache{interval=3,warmup=2,order=2,lite=true}",
    "abcache": "abcache{interval=3,warmup=2,order=2}",
    "dbcache": "dbcache{fn=1,bn=1,threshold=1000.0,warmup=2}",
    "adacache": "adacache{codebook='1000.0:3',default_steps=3}",
    "teacache": "teacache{threshold=1000.0,coefficients=[1.0,0.0],warmup=2}",
    "speca": "speca{tau0=1000.0,tau_min=1000.0,warmup=2,num_steps=7}",
    "pab": "pab{spatial=2,temporal=2,cross=2,window_low=0.0,window_high=1000000.0}",
    "fastercache": "fastercache{spatial=2,temporal=2,window_low=0.0,window_high=1000000.0,num_steps=7}",
    "deltadit": "deltadit{interval=2,boundary=3}",
    "easycache": "easycache{tau=1000.0,warmup=2}",
    "deepcache": "deepcache{interval=3}",
    "auto": "auto{interval=3}",  # the default: FORA, or DeepCache on a U-Net
    "magcache": "magcache{threshold=1000.0,max_skips=2,retention=0.0,calibration='{calibration}'}",
}
OK, REFUSED = "ok", "refused"


def policy_spec(key: str, entry: ZooModel | None = None) -> str:
    """The policy string of ``key``; MagCache's names a calibration file written here for ``entry``'s model
    (ratios near 1 at every timestep, so the decision caches up to ``max_skips`` in a row)."""
    spec = POLICIES.get(key) or EXTRA_POLICIES[key]
    if "{calibration}" not in spec:
        return spec
    if entry is None:
        raise ValueError(f"policy {key!r} needs the zoo model it is calibrated for")
    path = flat_magcache(Path(tempfile.gettempdir()) / "graphcache-zoo" / f"{entry.name}.magcache.json", entry.build())
    return spec.replace("{calibration}", str(path))


def flat_magcache(path: Path, model: torch.nn.Module) -> Path:
    """A MagCache calibration of ``model`` whose ratios are near 1 at every timestep (any convention): the
    decision caches up to ``max_skips`` in a row, whatever the model."""
    return calibration.save(path, model, 7, magcache={"timesteps": [-1.0e6, 1.0e6], "ratios": [0.99, 1.01],
                                                       "steps": 7})


def step_inputs(entry: ZooModel, k: int, t: torch.Tensor) -> dict[str, Any]:
    """``entry``'s inputs at step ``k`` of a generation: every floating-point tensor of 2+ dimensions scaled by
    ``1 + k / 20``, as a sampler's latent moves between steps (on a fixed latent EasyCache's transformation
    rate is 0 / 0, and a cached step that read a stale input would go unseen)."""
    scale = 1.0 + k / 20

    def move(value: Any) -> Any:
        moves = isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 2
        return value * scale if moves else value

    return pytree.tree_map(move, entry.inputs(t))


def policy_keys(text: str) -> list[str]:
    """``--policies``: names from either table, ``extra`` (every extra one) or ``all``."""
    keys: list[str] = []
    for word in (w for w in text.split(",") if w):
        group = {"all": [*POLICIES, *EXTRA_POLICIES], "extra": list(EXTRA_POLICIES)}.get(word, [word])
        for key in group:
            if key not in POLICIES and key not in EXTRA_POLICIES:
                raise SystemExit(f"unknown policy {key!r}; known: {', '.join([*POLICIES, *EXTRA_POLICIES])}")
            keys.append(key)
    return keys


@dataclasses.dataclass
class Case:
    model: str
    policy: str
    status: str  # ok | refused | wrong | stale | no-cache | recompile | full-graph | error
    detail: str = ""
    decisions: str = ""  # C = computed, . = cached
    cached_flops: float = float("nan")  # FLOPs of a cached step / FLOPs of a computed step
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status in (OK, REFUSED)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def reference(entry: ZooModel, steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The uncached model's outputs over ``steps`` steps of its own schedule (and the schedule)."""
    model, ts = entry.build(), entry.timesteps(steps)
    with torch.no_grad():
        return [output_tensor(model(**step_inputs(entry, k, t))).clone() for k, t in enumerate(ts)], ts


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


@contextlib.contextmanager
def outcome(case: Case) -> Iterator[None]:
    """Runs the body, recording on ``case`` what it raised (a named refusal, or an error) and its time."""
    start = time.perf_counter()
    try:
        yield
    except PassError as err:  # a pass that broke is graphcache's failure, not a refusal with a reason
        case.status, case.detail = "error", _first_line(err)
    except GraphcacheError as err:
        case.status, case.detail = REFUSED, _first_line(err)
    except Exception as err:  # the point of the zoo: anything but a named refusal is a failure
        case.status, case.detail = "error", _first_line(err)
    case.seconds = time.perf_counter() - start


def run_case(entry: ZooModel, policy: str, ref: Sequence[torch.Tensor], ts: Sequence[torch.Tensor]) -> Case:
    case = Case(entry.name, policy, OK)
    with outcome(case):
        _run(entry, policy_spec(policy, entry), ref, ts, case)
    return case


def _generation(fast: Any, entry: ZooModel, ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [output_tensor(fast(**step_inputs(entry, k, t))).clone() for k, t in enumerate(ts)]


def _run(entry: ZooModel, spec: str, ref: Sequence[torch.Tensor], ts: Sequence[torch.Tensor], case: Case) -> None:
    fast = graphcache.optimize(entry.build(), policy=spec, backend="eager")
    first = _generation(fast, entry, ts)
    decisions = graphcache.decisions(fast)
    case.decisions = "".join("C" if d == "computed" else "." for d in decisions)
    if len(decisions) != len(ts):
        case.status, case.detail = "stale", f"{len(decisions)} decisions logged for {len(ts)} calls"
        return
    for k, (out, expected, d) in enumerate(zip(first, ref, decisions, strict=True)):
        if d == "computed" and not _equal(out, expected):
            diff = float((out.double() - expected.double()).abs().max()) if out.shape == expected.shape else -1
            case.status, case.detail = "wrong", f"computed step {k} differs from the model by {diff:.3g}"
            return
    if "cached" not in decisions:
        case.status, case.detail = "no-cache", "every step computed: nothing was cached"
        return
    rewritten = fast.states[0].gm
    case.cached_flops = graph_flops(rewritten, "cached") / max(graph_flops(rewritten, "compute"), 1.0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        try:
            second = _generation(fast, entry, ts)
        except torch._dynamo.exc.RecompileError as err:
            case.status, case.detail = "recompile", _first_line(err)
            return
    if len(fast.states) != 1:
        case.status, case.detail = "recompile", f"{len(fast.states)} graphs compiled"
        return
    for k, (a, b) in enumerate(zip(first, second, strict=True)):
        if not _equal(a, b):
            case.status, case.detail = "stale", f"second generation differs from the first at step {k}"
            return
    state = fast.states[0]
    runner = state.cached_step
    cached = 2 * case.decisions.count(".")  # a static schedule's cached steps, both generations: by their own graph
    if runner is not None and runner.why_not != DYNAMIC and not fast.pieces and runner.runs != cached:
        case.status = "full-graph"
        case.detail = f"{runner.runs} of {cached} cached steps by their own graph ({runner.why_not})"
    elif fast.pieces and HostSchedule(state.gm).why_not is None:  # split by graph breaks: the cached region's
        ran = getattr(state.compiled_cached_step, "runs", 0)  # graph runs them inside dynamo's call
        if ran != cached:
            case.status = "full-graph"
            case.detail = f"{ran} of {cached} cached steps of the cached region by its cached-step graph"


@dataclasses.dataclass
class Captured:
    """One dynamo capture of a zoo model, shared by the policies after the first (tracing dominates the cost):
    the graph, its example inputs, and where each kwargs leaf goes among them."""

    gm: torch.fx.GraphModule
    example_inputs: list[Any]
    slots: dict[int, int]  # placeholder index -> index of the kwargs leaf it receives

    def flat(self, kwargs: dict[str, Any]) -> list[Any]:
        leaves = pytree.tree_leaves(kwargs)
        flat = list(self.example_inputs)
        for slot, leaf in self.slots.items():
            flat[slot] = leaves[leaf]
        return flat


def capture(entry: ZooModel, ts: Sequence[torch.Tensor]) -> Captured | None:
    """The model's dynamo graph (one graph: None when it does not fit one)."""
    graphs: list[tuple[torch.fx.GraphModule, list[Any]]] = []

    def keep(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    kwargs = entry.inputs(ts[0])
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.compile(entry.build(), backend=keep, fullgraph=True, dynamic=False)(**kwargs)
    except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError):
        return None
    gm, example = graphs[0]
    leaves = pytree.tree_leaves(kwargs)
    slots = {}
    for k, value in enumerate(example):
        leaf = next((j for j, x in enumerate(leaves) if x is value), None)
        if leaf is not None:
            slots[k] = leaf
    return Captured(gm, example, slots)


def run_captured(entry: ZooModel, policy: str, captured: Captured, ts: Sequence[torch.Tensor]) -> Case:
    """A policy applied through graphcache's backend to the shared capture; checked against that graph."""
    case = Case(entry.name, policy, OK)
    with outcome(case):
        states: list[Any] = []
        graph = torch.fx.GraphModule(captured.gm, copy.deepcopy(captured.gm.graph))
        fast = make_backend(policy_spec(policy, entry), "eager", states)(graph, captured.example_inputs)
        calls = [captured.flat(step_inputs(entry, k, t)) for k, t in enumerate(ts)]
        with torch.no_grad():
            ref = [pytree.tree_leaves(captured.gm(*flat)) for flat in calls]
            first = [[x.clone() for x in pytree.tree_leaves(fast(*flat))] for flat in calls]
            second = [[x.clone() for x in pytree.tree_leaves(fast(*flat))] for flat in calls]
        _check(case, states, first, second, ref)
    return case


def _check(case: Case, states: list[Any], first: list[list[torch.Tensor]], second: list[list[torch.Tensor]],
           ref: list[list[torch.Tensor]]) -> None:
    decisions = states[-1].decisions()
    case.decisions = "".join("C" if d == "computed" else "." for d in decisions)
    if len(decisions) != len(ref):
        case.status, case.detail = "stale", f"{len(decisions)} decisions logged for {len(ref)} calls"
        return
    for k, (outs, expected, d) in enumerate(zip(second, ref, decisions, strict=True)):
        if d == "computed" and not all(_equal(a, b) for a, b in zip(outs, expected, strict=True)):
            case.status, case.detail = "wrong", f"computed step {k} differs from the captured graph"
            return
    if "cached" not in decisions:
        case.status, case.detail = "no-cache", "every step computed: nothing was cached"
        return
    rewritten = states[-1].gm
    case.cached_flops = graph_flops(rewritten, "cached") / max(graph_flops(rewritten, "compute"), 1.0)
    for k, (a, b) in enumerate(zip(first, second, strict=True)):
        if not all(_equal(x, y) for x, y in zip(a, b, strict=True)):
            case.status, case.detail = "stale", f"second generation differs from the first at step {k}"
            return


def run_model(entry: ZooModel, policies: Sequence[str] = tuple(POLICIES), steps: int = 7) -> list[Case]:
    """The first policy through ``graphcache.optimize`` (dynamo, one graph, no recompiles, against the eager
    model); the others through the backend on one shared capture (against the captured graph)."""
    torch._dynamo.reset()
    ref, ts = reference(entry, steps)
    cases = [run_case(entry, policies[0], ref, ts)] if policies else []
    captured = capture(entry, ts) if len(policies) > 1 else None
    for policy in policies[1:]:
        torch._dynamo.reset()
        cases.append(run_captured(entry, policy, captured, ts) if captured is not None else
                     run_case(entry, policy, ref, ts))
    return cases


def markdown(cases: Sequence[Case]) -> str:
    policies = list(dict.fromkeys(c.policy for c in cases))
    by_model: dict[str, dict[str, Case]] = {}
    for c in cases:
        by_model.setdefault(c.model, {})[c.policy] = c
    lines = [
        "# Support matrix: diffusers denoisers x graphcache policies",
        "",
        "Generated by `python -m tests.zoo.matrix --markdown docs/support_matrix.md` (tiny seeded configs of every",
        "denoiser class diffusers ships, 7 steps in each model's own timestep convention, eager). `ok`: computed",
        "steps equal the model exactly, caching happens, a second generation equals the first, one graph; the",
        "figure is a cached step's FLOPs as a share of a computed step's. `refused`: graphcache said why.",
        "",
        "| model | " + " | ".join(policies) + " |",
        "|---|" + "---|" * len(policies),
    ]
    for model, row in by_model.items():
        cells = []
        for p in policies:
            c = row.get(p)
            if c is None:
                cells.append("")
            elif c.status == OK:
                cells.append(f"ok ({c.cached_flops:.0%})")
            else:
                cells.append(f"{c.status}: {c.detail.replace('|', '/')[:160]}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    counts = summary(cases)
    lines += ["", counts]
    return "\n".join(lines) + "\n"


def optimized_by_default(cases: Sequence[Case]) -> bool:
    """Under the default policy ``auto``: FORA's case (the same passes where the stack holds the step's work),
    or ``auto``'s own where it ran (FORA found no stack worth caching: DeepCache on a U-Net)."""
    fora = next(c for c in cases if c.policy == "fora")
    return fora.status == OK or any(c.policy == "auto" and c.status == OK for c in cases)


def summary(cases: Sequence[Case]) -> str:
    parts = []
    for policy in dict.fromkeys(c.policy for c in cases):
        mine = [c for c in cases if c.policy == policy]
        statuses: dict[str, int] = {}
        for c in mine:
            statuses[c.status] = statuses.get(c.status, 0) + 1
        parts.append(f"{policy}: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) + f" of {len(mine)}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--only", default="")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--markdown", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    names = [n for n in args.only.split(",") if n] or list(ZOO)
    policies = policy_keys(args.policies)
    cases: list[Case] = []
    for name in names:
        for case in run_model(ZOO[name], policies, args.steps):
            cases.append(case)
            print(f"{case.model:40s} {case.policy:16s} {case.status:9s} {case.decisions:9s} "
                  f"{case.cached_flops:6.0%} {case.seconds:5.1f}s {case.detail}", flush=True)
    print(summary(cases))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(cases))
    return 0 if all(c.passed for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
