"""Dead-code elimination that keeps in-place writes somebody reads.

``fx.Graph.eliminate_dead_code`` with only placeholders and outputs impure drops every node without users,
and an in-place write (``q[..., n:] = rotated``, ``out[..., 0::2] = ...``, ``x.mul_(s)``, ``aten.copy_``)
has none: its effect reaches later readers through the storage it writes. Dropping it changes what those
readers compute (the rotary embeddings of Wan, CogView4, EasyAnimate are written this way). Kept instead:
a write is live when a live node after it reads a tensor of the same storage (``meta["val"]`` of the
captured graph tells which nodes share storage), or when the written tensor's storage is unknown.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.fx as fx

# Python operators that write their first argument when it is a tensor (``x += y``, ``x[i] = v``).
_INPLACE_OPERATORS = frozenset({
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.imatmul,
})


def _is_inplace_name(name: str) -> bool:
    return name.endswith("_") and not name.startswith("_") and not name.endswith("__")


def written_args(node: fx.Node) -> list[fx.Node]:
    """The graph values ``node`` writes in place (empty for a functional node)."""
    if node.op not in ("call_function", "call_method"):
        return []
    target = node.target
    written: list[object] = []
    if node.op == "call_method" and isinstance(target, str) and _is_inplace_name(target):
        written.append(node.args[0])
    elif target in _INPLACE_OPERATORS:
        written.append(node.args[0])
    elif isinstance(target, torch._ops.OpOverload):
        schema = target._schema
        for k, arg in enumerate(schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = node.args[k] if k < len(node.args) else node.kwargs.get(arg.name)
                written.extend(value if isinstance(value, (list, tuple)) else [value])
    elif callable(target) and _is_inplace_name(getattr(target, "__name__", "")) and node.args:
        written.append(node.args[0])  # torch.Tensor.add_ called as a function, torch.relu_
    if "out" in node.kwargs:
        out = node.kwargs["out"]
        written.extend(out if isinstance(out, (list, tuple)) else [out])
    return [w for w in written if isinstance(w, fx.Node)]


def storage_key(node: fx.Node) -> int | None:
    """An identity of the storage ``node``'s value lives in (shared by views), or None when unknown."""
    val = node.meta.get("val", node.meta.get("example_value"))
    if not isinstance(val, torch.Tensor):
        return None
    try:
        return val.untyped_storage()._cdata  # type: ignore[no-any-return]
    except (RuntimeError, NotImplementedError):
        return None


def eliminate_dead_code(graph: fx.Graph, is_impure: Callable[[fx.Node], bool] | None = None) -> bool:
    """Erase nodes that neither feed the output nor write storage a live later node reads; True if any
    node was erased. ``is_impure`` marks further nodes to keep (placeholders and the output always are)."""
    live: set[fx.Node] = set()
    read_storages: set[int] = set()  # storages read by live nodes after the current one

    def keep(node: fx.Node) -> None:
        live.add(node)
        for inp in node.all_input_nodes:
            key = storage_key(inp)
            if key is not None:
                read_storages.add(key)

    for node in reversed(graph.nodes):
        if node.op in ("placeholder", "output") or (is_impure is not None and is_impure(node)):
            keep(node)
            continue
        if any(user in live for user in node.users):
            keep(node)
            continue
        written = written_args(node)
        if written and any(storage_key(w) is None or storage_key(w) in read_storages for w in written):
            keep(node)
    dead = [n for n in graph.nodes if n not in live]
    for node in reversed(dead):
        graph.erase_node(node)
    return bool(dead)
