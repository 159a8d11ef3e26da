"""Pass contract: frozen dataclass passes, checked pre/postconditions, and a pass manager.

A pass is called on a ``torch.fx.GraphModule`` and returns ``PassResult(gm, modified)``. Analysis passes
leave the graph as it is and record their result in ``gm.meta["graphcache"]`` under their ``provides``
key (a pass that replaces an earlier result, such as a narrowed ``block_stack``, names it in ``updates``;
any other replaced result is refused); transform passes read those results (``requires``) and edit the
graph. The manager lints the graph after every pass, gives every new node a ``meta["val"]`` (fake tensor
propagation), and names the failing pass and the passes before it in any error.
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

from .dead_code import written_args

if TYPE_CHECKING:
    from graphcache.analyses import Analyses

META_KEY = "graphcache"


@dataclasses.dataclass
class PassResult:
    gm: fx.GraphModule
    modified: bool
    # the pass kept ``meta["val"]`` right on every outer-graph node it changed (a lowering that edits only inside
    # branches, or drops cond outputs): no fake-tensor propagation after it, which reruns every cond
    values_kept: bool = False


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
    updates: ClassVar[tuple[str, ...]] = ()  # results of earlier passes it replaces (a narrowed block_stack)

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
        before = {key: id(value) for key, value in vars(found).items()}
        result = self.call(gm)
        after = analysis(result.gm)
        absent = [key for key in self.provides if key not in after]
        if absent:
            raise PassError(f"pass '{self.name}' did not record {absent} it promises")
        declared = {*self.provides, *self.updates}
        replaced = [key for key, value in vars(after).items()
                    if key in before and id(value) != before[key] and key not in declared]
        if after is found and replaced:
            raise PassError(f"pass '{self.name}' replaced the analysis results {replaced} without declaring them in "
                            "provides or updates")
        return result


def propagate_meta(gm: fx.GraphModule, example_inputs: Sequence[Any],
                   unchanged: Callable[[fx.Node], bool] | None = None) -> int:
    """Fill ``meta["val"]`` of every node with fake tensors by running the graph under a FakeTensorMode.

    Incremental with ``unchanged``: a function call for which it holds (it was there before the pass, with the
    same arguments) keeps its value unless one of its inputs was recomputed to another shape, dtype or stride
    or is a subgraph (a cond runs again: its branches may have changed inside). Placeholders, attributes and
    modules always run. The graph's existing fake mode is reused so kept and new values mix. Returns the
    number of nodes run."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    mode = _fake_mode_of(gm) if unchanged is not None and not _has_dynamic_scopes(gm) else None
    if mode is None:
        mode, unchanged = FakeTensorMode(allow_non_fake_inputs=True), None

    class _Prop(FakeTensorProp):
        def __init__(self, module: fx.GraphModule, fake_mode: Any) -> None:
            super().__init__(module, fake_mode)
            self.ran = 0
            self.moved: set[fx.Node] = set()  # recomputed to different metadata: their users run again

        def run_node(self, n: fx.Node) -> Any:
            old = n.meta.get("val")
            if (unchanged is not None and n.op == "call_function" and old is not None and unchanged(n)
                    and not n.is_impure()
                    and not any(a in self.moved or _is_subgraph(gm, a) for a in n.all_input_nodes)
                    and _in_mode(old, mode)):  # a cond's branches may have changed inside: it runs again
                return old
            self.ran += 1
            result = super().run_node(n)
            if unchanged is not None and not _same_meta(old, result):
                self.moved.add(n)
            return result

        def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
            value = super().get_attr(target, args, kwargs)
            return self._mode.from_tensor(value) if isinstance(value, torch.Tensor) else value

    fake_inputs = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs]
    prop = _Prop(gm, mode)
    with torch.no_grad():
        prop.propagate_dont_convert_inputs(*fake_inputs)
    return prop.ran


def _has_dynamic_scopes(gm: fx.GraphModule) -> bool:
    """Calls that open a scope later calls run in (vmap levels: ``_vmap_increment_nesting`` ...
    ``_add_batch_dim``): their graph is propagated in full, since a kept call would not open its scope."""
    def opens_scope(n: fx.Node) -> bool:
        return "functorch" in getattr(n.target, "__module__", "") or "vmap" in str(n.target)

    return any(n.op == "call_function" and opens_scope(n) for n in gm.graph.nodes)


def _is_subgraph(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "get_attr" and isinstance(getattr(gm, str(node.target), None), fx.GraphModule)


def _fake_mode_of(gm: fx.GraphModule) -> Any:
    """The fake mode of the graph's values (``None``: none, or several)."""
    from torch._subclasses.fake_tensor import FakeTensor

    modes = {id(v.fake_mode): v.fake_mode for node in gm.graph.nodes
             for v in torch.utils._pytree.tree_leaves(node.meta.get("val")) if isinstance(v, FakeTensor)}
    if len(modes) != 1:
        return None
    mode = next(iter(modes.values()))
    return mode if mode.allow_non_fake_inputs and mode.shape_env is None else None


def _in_mode(value: Any, mode: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    leaves = torch.utils._pytree.tree_leaves(value)
    return all(not isinstance(v, torch.Tensor) or (isinstance(v, FakeTensor) and v.fake_mode is mode)
               for v in leaves)


def _same_meta(old: Any, new: Any) -> bool:
    """Same structure, and tensors of the same shape, dtype, stride and device (values of other kinds equal)."""
    old_leaves, old_spec = torch.utils._pytree.tree_flatten(old)
    new_leaves, new_spec = torch.utils._pytree.tree_flatten(new)
    if old_spec != new_spec:
        return False
    for a, b in zip(old_leaves, new_leaves, strict=True):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if (a.shape, a.dtype, a.stride(), a.device) != (b.shape, b.dtype, b.stride(), b.device):
                return False
        elif isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or type(a) is not type(b) or a != b:
            return False
    return True


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
                args_before = {n: (n.args, n.kwargs) for n in nodes_before}
                result = p(gm)
                propagated = 0.0
                if not result.modified and _checking() and list(result.gm.graph.nodes) != nodes_before:
                    raise PassError(f"pass '{p.name}' changed the graph but reported modified=False")
                if result.modified:
                    _mark_added(result.gm, set(nodes_before), p.name)
                    result.gm.graph.lint()
                    result.gm.recompile()
                    before = time.perf_counter()
                    ran = 0 if result.values_kept else propagate_meta(result.gm, self.example_inputs,
                                                                      _unchanged_since(args_before))
                    analysis(result.gm).propagated.append((p.name, ran, len(result.gm.graph.nodes)))
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


def _unchanged_since(args_before: dict[fx.Node, Any]) -> Callable[[fx.Node], bool]:
    """Whether a node was there before the pass with the same arguments (its value can be kept)."""
    def unchanged(node: fx.Node) -> bool:
        before = args_before.get(node)
        return before is not None and _same_args(before, (node.args, node.kwargs))

    return unchanged


def _same_args(a: Any, b: Any) -> bool:
    """Argument structures equal, nodes compared by identity (``==`` on tensors would compare values)."""
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        return a is b
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_args(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_args(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return type(a) is type(b) and a == b


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


# nodes whose value is no tensor: checks kept for their effect, and the autocast scope a copied block opens
# and closes (Z-Image's blocks under SpeCa's verification copy)
_RETURNS_NOTHING = (torch.ops.aten._assert_async.msg, torch.amp.autocast_mode._enter_autocast,
                    torch.amp.autocast_mode._exit_autocast)


def _check_meta(gm: fx.GraphModule, pass_name: str) -> None:
    for node in gm.graph.nodes:
        if node.op in ("output",) or node.meta.get("val") is not None or node.target in _RETURNS_NOTHING:
            continue
        if not node.users and written_args(node):  # a copied in-place write (``out[..., 0::2] = ...``): None
            continue
        if node.op == "get_attr" and isinstance(getattr(gm, str(node.target), None), fx.GraphModule):
            continue
        if META_KEY in node.meta:
            raise PassError(f"pass '{pass_name}' left node '{node.name}' without meta['val']")
