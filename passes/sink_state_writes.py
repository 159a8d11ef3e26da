"""Lowering pass for torch.compile: write each cache state buffer inside the branch that changes it.

Precondition: ``cache_branch`` (the ``higher_order.cond`` built by insert_cache_branch, whose branches return
the region outputs and then one new value per cache state buffer, each written back by an ``aten.copy_``
after the cond). Postcondition: the cond returns the region outputs only; a branch whose new value for a
buffer is that buffer unchanged (a clone of its own operand: reuse and forecasts on cached steps) writes
nothing, any other branch writes the buffer with ``aten.copy_`` into its operand after computing every new
value; ``state_writes`` records how many buffers moved and the state bytes a cached step writes before and
after.

Why: functional branches make a cached step copy every unchanged cache tensor out of the branch and back into
its buffer (two passes over the cache). torch.compile runs cond branches that mutate their operands under
``no_grad`` (auto-functionalized, then re-inplaced by Inductor), so the lowering for it can write in place.
torch.export and ONNX need functional branches: the export routes never run this pass.

A cond nested in a branch (phased plans: Delta-DiT, PAB) must stay functional (torch.cond refuses a nested
cond whose branches write their operands): a buffer every nested branch leaves unchanged is dropped from it,
any other is written by the enclosing branch. A buffer is only moved when it reaches the cond as the state
buffer itself (a ``get_attr``), so the branch's write lands in the buffer; and only when every other read of
it in the step comes before the cond and no other buffer takes its old value unchanged (a ring of past
outputs). Inductor let such reads see the branch's in-place write (EasyCache's rate, AB-Cache's and FoCa's
rings): those buffers stay written after the cond, and ``state_writes`` counts their round trip.
"""

from __future__ import annotations

import dataclasses
import functools
import operator

import torch
import torch.fx as fx

from graphcache.analyses import StateSpec, StateWrites

from .base import Pass, PassResult, analysis, mark
from .dead_code import eliminate_dead_code
from .graph_utils import ancestors, tensor_val

_COND = torch.ops.higher_order.cond
_COPY = torch.ops.aten.copy_.default


@functools.cache
def branch_writes_supported() -> bool:
    """Whether this torch lowers a cond whose branch writes its operand: AOT functionalization (torch.compile's
    ``aot_eager`` and Inductor) must turn the write into an auto-functionalized cond and write the operand
    back. torch 2.13 does; torch 2.11 refuses it ("cond_true might be modifying the input!"), and then the
    lowering keeps functional branches. Probed once per process on a two-element cond (about 0.1 s)."""
    from functorch.compile import aot_function, nop
    from torch.fx.experimental.proxy_tensor import make_fx

    def write(x: torch.Tensor, buf: torch.Tensor) -> tuple[torch.Tensor]:
        buf.copy_(x)
        return (x + 1,)

    def keep(x: torch.Tensor, buf: torch.Tensor) -> tuple[torch.Tensor]:
        return (x - 1,)

    x, buf = torch.ones(2), torch.zeros(2)
    true_gm, false_gm = make_fx(write)(x, buf), make_fx(keep)(x, buf)
    try:
        with torch.no_grad():
            aot_function(lambda p, a, b: _COND(p, true_gm, false_gm, (a, b)), nop)(torch.tensor(True), x, buf)
    except RuntimeError as err:
        if "modifying the input" in str(err) or "mutation" in str(err):
            return False
        raise
    return bool(buf.eq(1).all())  # the write landed in the operand


def _cond_branches(owner: fx.GraphModule, cond: fx.Node) -> tuple[fx.GraphModule, fx.GraphModule]:
    true_fn, false_fn = cond.args[1], cond.args[2]
    assert isinstance(true_fn, fx.Node) and isinstance(false_fn, fx.Node)
    return getattr(owner, str(true_fn.target)), getattr(owner, str(false_fn.target))


def _unchanged(owner: fx.GraphModule, value: fx.Node, placeholder: fx.Node) -> bool:
    """``value`` is the operand ``placeholder`` itself or a plain copy of it, or the output of a nested cond
    whose every branch returns its own operand for ``placeholder`` unchanged."""
    value = _forwarded(value)
    if value is placeholder:
        return True
    inner = _nested_cond(value)
    if inner is None or placeholder not in inner[0].args[3]:  # type: ignore[operator]
        return False
    cond, slot = inner
    index = list(cond.args[3]).index(placeholder)  # type: ignore[arg-type]
    for branch in _cond_branches(owner, cond):
        placeholders = [n for n in branch.graph.nodes if n.op == "placeholder"]
        output = next(n for n in reversed(branch.graph.nodes) if n.op == "output")
        if not _unchanged(branch, output.args[0][slot], placeholders[index]):  # type: ignore[index]
            return False
    return True


def _sink(branch: fx.GraphModule, writes: dict[int, int]) -> None:
    """In ``branch``, write output ``k``'s value into placeholder ``writes[k]`` instead of returning it (nothing
    when the value is the operand unchanged), and drop those outputs (the caller renumbers its reads).

    A nested cond (a phased plan's steps) keeps functional branches, as torch.cond requires of a cond inside
    a branch: a buffer it returns unchanged from every branch is dropped from it, any other is written here,
    from the nested cond's output."""
    graph = branch.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    values = list(output.args[0])  # type: ignore[arg-type]
    copies: list[tuple[fx.Node, fx.Node]] = []
    nested: dict[fx.Node, dict[int, int]] = {}  # a nested cond -> its unchanged outputs and their operands
    for k, index in writes.items():
        value, target = values[k], placeholders[index]
        if not _unchanged(branch, value, target):
            copies.append((target, value))
            continue
        inner = _nested_cond(value)
        if inner is not None and len(value.users) == 1:
            cond, slot = inner
            nested.setdefault(cond, {})[slot] = list(cond.args[3]).index(target)  # type: ignore[arg-type]
    with graph.inserting_before(output):
        for target, value in copies:
            mark(graph.call_function(_COPY, (target, value)), SinkStateWrites.name, "state")
    output.args = (tuple(v for k, v in enumerate(values) if k not in writes),)
    for cond, inner_writes in nested.items():
        _sink_cond(branch, cond, inner_writes)
    eliminate_dead_code(graph, is_impure=lambda n: n.target is _COPY)  # the clones of unchanged state
    graph.lint()
    branch.recompile()


def _nested_cond(value: fx.Node) -> tuple[fx.Node, int] | None:
    """``(cond, k)`` when ``value`` is ``getitem(cond, k)`` of a cond in the same graph."""
    if value.op == "call_function" and value.target is operator.getitem:
        source, k = value.args
        if isinstance(source, fx.Node) and source.target is _COND and isinstance(k, int):
            return source, k
    return None


def _sink_cond(owner: fx.GraphModule, cond: fx.Node, writes: dict[int, int]) -> None:
    """Move the writes of ``cond``'s outputs ``k`` into operand ``writes[k]`` into both its branches, then
    renumber the reads of its remaining outputs."""
    true_gm, false_gm = _cond_branches(owner, cond)
    _sink(true_gm, writes)
    _sink(false_gm, writes)
    gone = set(writes)
    vals = cond.meta.get("val")
    if isinstance(vals, (list, tuple)):  # the cond's value without the outputs that went into the branches
        cond.meta["val"] = type(vals)(v for k, v in enumerate(vals) if k not in gone)
    for node in [n for n in cond.users if n.target is operator.getitem]:
        k = int(node.args[1])  # type: ignore[arg-type]
        if k in gone:
            assert not node.users, f"output {k} of {cond.name} is read after its write moved into the branches"
            owner.graph.erase_node(node)
        else:
            node.args = (cond, k - sum(1 for g in gone if g < k))


@dataclasses.dataclass(frozen=True)
class SinkStateWrites(Pass):
    name = "sink_state_writes"
    requires = ("cache_branch", "state")
    provides = ("state_writes",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        assert found.cache_branch is not None
        cond = next(n for n in gm.graph.find_nodes(op="call_function", target=_COND)
                    if str(n.args[1].target) == found.cache_branch["compute"])  # type: ignore[union-attr]
        operands = list(cond.args[3])  # type: ignore[arg-type]
        cache_buffers = {str(n.target) for n in found.require(StateSpec).cache_nodes()}
        writes: dict[int, int] = {}
        copies: dict[int, fx.Node] = {}  # output k -> its write-back after the cond
        feeds_cond = ancestors(cond)
        for read in cond.users:
            if read.target is not operator.getitem or len(read.users) != 1:
                continue
            (copy,) = read.users
            buffer = copy.args[0]
            if (copy.target is _COPY and copy.args[1] is read and isinstance(buffer, fx.Node)
                    and buffer.op == "get_attr" and str(buffer.target) in cache_buffers and buffer in operands):
                writes[int(read.args[1])] = operands.index(buffer)  # type: ignore[arg-type]
                copies[int(read.args[1])] = copy  # type: ignore[arg-type]
        before = 2 * sum(_bytes(gm, c.args[0]) for c in copies.values())
        read_beside = [k for k, c in copies.items() if not _read_by_cond_only(c, cond, feeds_cond)]
        kept = []
        for k in {*read_beside, *_read_by_another_write(gm, cond, writes)}:
            kept.append(copies.pop(k))
            del writes[k]
        for copy in copies.values():
            gm.graph.erase_node(copy)
        if writes:
            _sink_cond(gm, cond, writes)
        _, cached = _cond_branches(gm, cond)
        after = _written_bytes(cached) + 2 * sum(_bytes(gm, c.args[0]) for c in kept)  # kept: out and back
        found.state_writes = StateWrites(len(writes), before, after)
        return PassResult(gm, modified=bool(writes), values_kept=True)  # the cond's value narrowed above


def _read_by_cond_only(copy: fx.Node, cond: fx.Node, feeds_cond: set[fx.Node]) -> bool:
    """Whether every read of the buffer ``copy`` writes back happens before the cond: the cond itself, that
    ``copy``, or a value the cond depends on (SpeCa's draft, EasyCache's rate). Any other read (EasyCache keeps
    the cache's value before the step: ``delta_a2``) must see the buffer before the step's write; with the
    branch writing in place, Inductor let it see the new value (the rate, and so the decisions, departed from
    the rule), so such a buffer stays written after the cond."""
    buffer = copy.args[0]
    assert isinstance(buffer, fx.Node)
    return all(user is cond or user is copy or user in feeds_cond or (not user.users and not user.is_impure())
               for user in buffer.users)  # the last: a dead read, dropped later


def _read_by_another_write(gm: fx.GraphModule, cond: fx.Node, writes: dict[int, int]) -> list[int]:
    """The outputs ``k`` of ``writes`` whose buffer another buffer takes as its new value unchanged in a
    branch (a ring of past outputs: ``buf1 <- clone(buf0), buf0 <- new``). Written in place in the branch,
    Inductor moved the clone after the write (AB-Cache's and FoCa's rings shifted the new value in); these
    buffers stay written after the cond. Values computed from a buffer (``d1 <- (new - d0) / dt``) are
    ordered right and keep their writes in the branch."""
    targets = {index: k for k, index in writes.items()}
    keep: set[int] = set()
    for branch in _cond_branches(gm, cond):
        placeholders = [n for n in branch.graph.nodes if n.op == "placeholder"]
        output = next(n for n in reversed(branch.graph.nodes) if n.op == "output")
        values = list(output.args[0])  # type: ignore[arg-type]
        for k, index in writes.items():
            source = _forwarded(values[k])
            keep.update(targets[i] for i in targets if i != index and placeholders[i] is source)
    return sorted(keep)


def _forwarded(value: fx.Node) -> fx.Node:
    """``value`` without the clones and aliases around it."""
    while value.op == "call_function" and value.target in (torch.ops.aten.clone.default,
                                                          torch.ops.aten.alias.default):
        value = value.args[0]  # type: ignore[assignment]
    return value


def _bytes(gm: fx.GraphModule, buffer: object) -> int:
    assert isinstance(buffer, fx.Node)
    value = gm.get_buffer(str(buffer.target))
    return value.numel() * value.element_size()


def _written_bytes(branch: fx.GraphModule) -> int:
    """Bytes the branch writes into its operands, nested branches included (each phase counted: a bound)."""
    total = 0
    for node in branch.graph.nodes:
        if node.target is _COPY:
            val = tensor_val(node.args[0])  # type: ignore[arg-type]
            total += 0 if val is None else val.numel() * val.element_size()
        elif node.target is _COND:
            total += sum(_written_bytes(b) for b in _cond_branches(branch, node))
    return total
