"""The self-check: a computed step of the rewritten graph must equal the model, checked on real inputs.

Compute steps are promised bit-exact; a rewrite that breaks that promise (a pass that drops an in-place
write, a region that misses a side input) would otherwise give silently wrong images. Before the rewritten
graph is lowered, both graphs run op by op on the inputs of the first call (the first step of a generation
always computes) and their outputs are compared exactly; the cache state is restored afterwards, so the check
leaves no trace. A mismatch is refused with :class:`SelfCheckError` naming the first node whose value
differs (both graphs are interpreted once more, recording every value, only then).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from graphcache.errors import UnsupportedGraphError
from graphcache.passes.graph_utils import clean_path, module_stack, op_name


class SelfCheckError(UnsupportedGraphError):
    """The rewritten graph's computed step differs from the model: graphcache refuses to cache it."""


def snapshot(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm``'s graph over the same parameters: the reference the rewritten graph is checked against."""
    return fx.GraphModule(gm, copy.deepcopy(gm.graph))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point() or a.is_complex():
            return bool(((a == b) | (a.isnan() & b.isnan())).all())
        return torch.equal(a, b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return True  # non-tensor values (None, shapes) are the graph's structure, not its numbers


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().nan_to_num(nan=float("inf")).max()) if a.numel() else 0.0


@contextmanager
def _state_kept(gm: fx.GraphModule) -> Iterator[None]:
    """Run ``gm`` and put every graphcache state buffer back as it was."""
    saved = {name: buf.clone() for name, buf in gm.named_buffers() if name.split(".")[-1].startswith("_gc_")}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                gm.get_buffer(name).copy_(value)


def _real(inputs: Sequence[Any]) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return not any(isinstance(x, FakeTensor) for x in inputs)


def check_compute_step(original: fx.GraphModule, rewritten: fx.GraphModule, inputs: Sequence[Any]) -> bool:
    """Raise :class:`SelfCheckError` when ``rewritten`` (the first step of a generation: computed) does not
    give ``original``'s outputs on ``inputs``; False when the inputs are fake (nothing to run), else True."""
    if not _real(inputs):
        return False
    with torch.no_grad(), _state_kept(rewritten):
        expected = pytree.tree_leaves(fx.Interpreter(original).run(*inputs))  # the graph's flat calling
        got = pytree.tree_leaves(fx.Interpreter(rewritten).run(*inputs))  # convention, export's or dynamo's
    if len(expected) == len(got) and all(_same(a, b) for a, b in zip(expected, got, strict=True)):
        return True
    bad = next((k for k, (a, b) in enumerate(zip(expected, got, strict=False)) if not _same(a, b)), None)
    if bad is None:
        where = f"{len(got)} outputs instead of {len(expected)}"
    else:
        a, b = expected[bad], got[bad]
        diff = _max_diff(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else float("nan")
        where = f"output {bad} differs by up to {diff:.3g}"
    raise SelfCheckError(
        f"graphcache's rewritten graph does not reproduce the model on a computed step ({where}); "
        f"{first_divergence(original, rewritten, inputs)}. graphcache refuses to cache a graph it cannot "
        "reproduce (this is a graphcache bug: please report it with the model). self_check=False skips this "
        "check, with wrong results"
    )


# Ops whose values are uninitialised memory until something writes them: never compared.
_UNINITIALIZED = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "empty_permuted"})


class _Recorder(fx.Interpreter):
    """Interprets a graph, recording every node's value by name (nested cond branches included)."""

    def __init__(self, gm: fx.GraphModule, values: dict[str, Any]) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.values = values

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_function" and n.target is torch.ops.higher_order.cond:
            pred, true_fn, false_fn, operands = n.args[:4]
            branch = self.env[true_fn if bool(self.env[pred]) else false_fn]  # type: ignore[index]
            values = [self.env[a] if isinstance(a, fx.Node) else a for a in operands]  # type: ignore[union-attr]
            result = _Recorder(branch, self.values).run(*values)
        else:
            result = super().run_node(n)
        if n.op not in ("placeholder", "get_attr", "output"):
            self.values.setdefault(n.name, result.clone() if isinstance(result, torch.Tensor) else result)
        return result


def _describe(node: fx.Node) -> str:
    stack = module_stack(node)
    where = f" in {clean_path(stack[-1][1])}" if stack else ""
    return f"'{node.name}' ({op_name(node)}{where})"


def first_divergence(original: fx.GraphModule, rewritten: fx.GraphModule, inputs: Sequence[Any]) -> str:
    """The first node, in the model's order, whose value differs between the two graphs."""
    ref: dict[str, Any] = {}
    new: dict[str, Any] = {}
    with torch.no_grad(), _state_kept(rewritten):
        _Recorder(original, ref).run(*inputs)
        _Recorder(rewritten, new).run(*inputs)
    missing: list[fx.Node] = []
    for node in original.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output") or op_name(node) in _UNINITIALIZED:
            continue
        if node.name not in new:
            missing.append(node)
        elif node.name in ref and not _same(ref[node.name], new[node.name]):
            text = f"first diverging node: {_describe(node)}"
            if missing:
                text += "; model nodes before it that the rewritten graph lacks: " + ", ".join(
                    _describe(m) for m in missing[:3])
            return text
    return "no single node differs (the outputs are assembled differently)"
