"""Pass contract: frozen dataclass passes, checked pre/postconditions, and a pass manager.

A pass is called on a ``torch.fx.GraphModule`` and returns ``PassResult(gm, modified)``. Analysis passes
leave the graph as it is and record their result in ``gm.meta["graphcache"]`` under their ``provides``
key; transform passes read those results (``requires``) and edit the graph. The manager lints the graph
after every pass, gives every new node a ``meta["val"]`` (fake tensor propagation), and names the failing
pass and the passes before it in any error.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.fx as fx

from graphcache.errors import GraphcacheError, PassError, first_line

if TYPE_CHECKING:
    from graphcache.analyses import Analyses

META_KEY = "graphcache"


@dataclasses.dataclass
class PassResult:
    gm: fx.GraphModule
    modified: bool


def analysis(gm: fx.GraphModule) -> Analyses:
    """The analysis results recorded on ``gm`` by capture and earlier passes (created on first use)."""
    from graphcache.analyses import Analyses

    found = gm.meta.get(META_KEY)
    if not isinstance(found, Analyses):
        found = gm.meta[META_KEY] = Analyses()
    return found


def mark(node: fx.Node, pass_name: str, role: str) -> fx.Node:
    """Record provenance on a node a pass created: which pass, and its role (state / decision / ...)."""
    node.meta[META_KEY] = {"pass": pass_name, "role": role}
    return node


def mark_new(graph: fx.Graph, before: set[fx.Node], pass_name: str, role: str) -> None:
    """:func:`mark` every node of ``graph`` that is not in ``before`` (the nodes a pass just added)."""
    for node in graph.nodes:
        if node not in before:
            mark(node, pass_name, role)


@dataclasses.dataclass(frozen=True)
class Pass:
    """Base of every graphcache pass: subclasses set ``name`` and implement ``call``."""

    name: ClassVar[str] = "pass"
    requires: ClassVar[tuple[str, ...]] = ()  # analysis keys that must exist before the pass
    provides: ClassVar[tuple[str, ...]] = ()  # analysis keys the pass records

    def call(self, gm: fx.GraphModule) -> PassResult:
        raise NotImplementedError

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        missing = [key for key in self.requires if key not in found]
        if missing:
            raise PassError(
                f"pass '{self.name}' requires {missing} from an earlier pass, found only {sorted(found)}; "
                "run the passes that provide them first (see passes/README.md for the order)"
            )
        result = self.call(gm)
        absent = [key for key in self.provides if key not in analysis(result.gm)]
        if absent:
            raise PassError(f"pass '{self.name}' did not record {absent} it promises")
        return result


def propagate_meta(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Fill ``meta["val"]`` of every node with fake tensors by running the graph under a FakeTensorMode."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    class _Prop(FakeTensorProp):
        def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
            value = super().get_attr(target, args, kwargs)
            return self._mode.from_tensor(value) if isinstance(value, torch.Tensor) else value

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_inputs = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs]
    with torch.no_grad():
        _Prop(gm, mode).propagate_dont_convert_inputs(*fake_inputs)


def _dump_requested(pass_name: str) -> bool:
    wanted = os.environ.get("GRAPHCACHE_DUMP", "")
    return wanted == "all" or pass_name in {w.strip() for w in wanted.split(",")}


@dataclasses.dataclass
class PassManager:
    """Runs passes in order; lints after each, propagates meta, dumps graphs on request.

    ``GRAPHCACHE_DUMP=insert_cache_branch`` (or ``all``) writes the graph before and after that pass to
    ``GRAPHCACHE_DUMP_DIR`` (default ``./graphcache_dump``).
    """

    passes: Sequence[Pass]
    example_inputs: Sequence[Any] = ()
    on_pass: Callable[[Pass, PassResult], None] | None = None

    def __call__(self, gm: fx.GraphModule) -> fx.GraphModule:
        done: list[str] = []
        for p in self.passes:
            if _dump_requested(p.name):
                self._dump(gm, f"{len(done):02d}-{p.name}-before")
            try:
                start = time.perf_counter()
                nodes_before = list(gm.graph.nodes)
                result = p(gm)
                propagated = 0.0
                if not result.modified and _checking() and list(result.gm.graph.nodes) != nodes_before:
                    raise PassError(f"pass '{p.name}' changed the graph but reported modified=False")
                if result.modified:
                    _mark_added(result.gm, set(nodes_before), p.name)
                    result.gm.graph.lint()
                    result.gm.recompile()
                    before = time.perf_counter()
                    propagate_meta(result.gm, self.example_inputs)
                    propagated = time.perf_counter() - before
                    _check_meta(result.gm, p.name)
                    if _checking():
                        _check_state_registered(result.gm, p.name)
                analysis(result.gm).timings.append(
                    (p.name, time.perf_counter() - start, propagated))
            except GraphcacheError as err:
                if isinstance(err, PassError) or done == []:
                    raise
                raise type(err)(f"{err} [in pass '{p.name}', after {done}]") from err
            except Exception as err:
                raise PassError(f"pass '{p.name}' failed (passes before it: {done}): {first_line(err, 400)}") from err
            gm = result.gm
            done.append(p.name)
            if _dump_requested(p.name):
                self._dump(gm, f"{len(done) - 1:02d}-{p.name}-after")
            if self.on_pass is not None:
                self.on_pass(p, result)
        return gm

    @staticmethod
    def _dump(gm: fx.GraphModule, stem: str) -> None:
        folder = Path(os.environ.get("GRAPHCACHE_DUMP_DIR", "graphcache_dump"))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.txt").write_text(gm.print_readable(print_output=False))


def _checking() -> bool:
    """Invariant checks after every pass: on in the test suite and with ``GRAPHCACHE_CHECK=1``."""
    return os.environ.get("GRAPHCACHE_CHECK") == "1"


def _mark_added(gm: fx.GraphModule, before: set[fx.Node], pass_name: str) -> None:
    """Provenance for every node ``pass_name`` added that it did not mark itself, and for every node of a
    subgraph (a cond branch) it added: role ``added`` / ``branch``."""
    for node in gm.graph.nodes:
        if node in before:
            continue
        if META_KEY not in node.meta:
            mark(node, pass_name, "added")
        sub = getattr(gm, str(node.target), None) if node.op == "get_attr" else None
        if isinstance(sub, fx.GraphModule):
            for inner in sub.graph.nodes:
                if META_KEY not in inner.meta:
                    mark(inner, pass_name, "branch")


def _check_state_registered(gm: fx.GraphModule, pass_name: str) -> None:
    """Invariant 7: every state buffer the graph writes is registered in the state spec (reset, exports)."""
    from .dead_code import written_args

    state = analysis(gm).state
    if state is None:
        return
    known = set(state.buffers)
    for node in gm.graph.nodes:
        target = str(node.target)
        written = any(node in written_args(user) for user in node.users)
        if node.op == "get_attr" and target.startswith("_gc_") and written:  # constants (knots) are not state
            if target not in known:
                raise PassError(f"pass '{pass_name}' writes state buffer {target!r} that is not registered through "
                                "StateSpec.add (reset() and the exports would not know it)")


def _check_meta(gm: fx.GraphModule, pass_name: str) -> None:
    for node in gm.graph.nodes:
        if node.op in ("output",) or node.meta.get("val") is not None:
            continue
        if node.op == "get_attr" and isinstance(getattr(gm, str(node.target), None), fx.GraphModule):
            continue
        if META_KEY in node.meta:
            raise PassError(f"pass '{pass_name}' left node '{node.name}' without meta['val']")
