"""Analysis pass: find the stack(s) of repeated blocks by graph structure.

Preconditions: nodes carry ``meta["nn_module_stack"]`` (export or dynamo capture) and ``meta["val"]``;
``gm.meta["graphcache"]["user_inputs"]`` names the placeholders that are user inputs (not parameters).
Postcondition: ``gm.meta["graphcache"]["block_stack"]`` is a :class:`BlockStack`; the graph is unchanged.

A block is one contiguous run of nodes executed inside one submodule call. Candidate blocks are grouped by
(parent call, class); a *chain* is a sequence of such runs whose node sequences are identical up to
renaming (same ops, same internal wiring, same input shapes) and where each run reads a value computed by
the one before it. Module names never decide anything: they only label the report.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from typing import Any

import torch.fx as fx

from graphcache.blockstack import Block, BlockStack, Stack
from graphcache.errors import NoStackError, SmallStackError, UnsupportedGraphError

from .base import Pass, PassResult, analysis
from .cost import flops
from .graph_utils import (
    STRUCTURAL_OPS,
    boundary,
    clean_path,
    descendants,
    find_timestep,
    is_compute,
    module_stack,
    op_name,
    tensor_val,
)

MIN_REGION_SHARE = 0.25  # of the step's FLOPs: a smaller stack is refused (caching it would not pay)


@dataclasses.dataclass
class _Run:
    instance: tuple[str, ...]
    path: str
    class_name: str
    start: int  # position in the graph's node list
    end: int
    _signature: Any = None
    _block: Block | None = None
    members: list[fx.Node] | None = None  # when not every compute node from start to end (a pair of calls)


def _collect_runs(nodes: list[fx.Node]) -> list[_Run]:
    """Maximal runs of nodes per submodule call; a call re-entered later (shared module) gives a new run."""
    open_runs: dict[int, _Run] = {}
    runs: list[_Run] = []
    for pos, node in enumerate(nodes):
        if not is_compute(node):
            continue
        stack = module_stack(node)
        keys = tuple(key for key, _, _ in stack)
        for depth, (_, path, cls) in enumerate(stack):
            instance = keys[: depth + 1]
            current = open_runs.get(depth)
            if current is not None and current.instance == instance:
                current.end = pos
                continue
            run = _Run(instance, clean_path(path), cls, pos, pos)
            open_runs[depth] = run
            runs.append(run)
        # shallower glue nodes (no entry at a depth) leave the runs open at that depth
    return runs


def _block_of(run: _Run, nodes: list[fx.Node]) -> Block:
    if run._block is None:
        members = run.members or [n for n in nodes[run.start : run.end + 1] if is_compute(n)]
        run._block = Block(members, *boundary(members), run.path)
    return run._block


def _signature(run: _Run, nodes: list[fx.Node]) -> Any:
    """The block's node sequence with nodes renamed to positions: equal signatures = identical blocks."""
    if run._signature is None:
        block = _block_of(run, nodes)
        members = set(block.nodes)
        # A view op whose result only leaves the block (e.g. Flux's last single block splitting off the
        # text stream) is dropped by dynamo when nobody reads it: such nodes do not count as structure.
        body_nodes = [
            n for n in block.nodes
            if not (op_name(n) in STRUCTURAL_OPS and all(u not in members for u in n.users))
        ]
        local = {n: i for i, n in enumerate(body_nodes)}
        slot = {n: i for i, n in enumerate(block.inputs)}

        def enc(a: Any) -> Any:
            if isinstance(a, fx.Node):
                if a in local:
                    return ("n", local[a])
                return ("x", slot[a]) if a in slot else ("v", op_name(a))
            return a

        body = tuple(
            (n.op, op_name(n), repr(fx.node.map_aggregate(n.args, enc)), repr(fx.node.map_aggregate(n.kwargs, enc)))
            for n in body_nodes
        )
        shapes = []
        for inp in block.inputs:
            val = tensor_val(inp)
            shapes.append((tuple(val.shape), str(val.dtype)) if val is not None else type(inp.meta.get("val")))
        run._signature = (body, tuple(shapes))
    return run._signature


def _find_chains(nodes: list[fx.Node], runs: list[_Run]) -> list[list[_Run]]:
    groups: dict[tuple[Any, ...], list[_Run]] = defaultdict(list)
    for run in runs:
        groups[(run.instance[:-1], run.class_name)].append(run)
    chains: list[list[_Run]] = []
    for members in groups.values():
        members.sort(key=lambda r: r.start)
        chain = [members[0]]
        for run in members[1:]:
            prev = chain[-1]
            if _follows(prev, run, nodes):
                chain.append(run)
                continue
            if len(chain) > 1:
                chains.append(chain)
            chain = [run]
        if len(chain) > 1:
            chains.append(chain)
    return chains


def _find_alternating_chains(nodes: list[fx.Node], runs: list[_Run]) -> list[list[_Run]]:
    """Stacks whose repeated unit is a *pair* of calls (Latte: a spatial then a temporal block; ACE-Step:
    sliding-window then full attention layers): sibling calls that alternate between two different
    structures, each reading the previous one's output, are chained pairwise as one unit."""
    groups: dict[tuple[str, ...], list[_Run]] = defaultdict(list)
    for run in runs:
        groups[run.instance[:-1]].append(run)
    chains: list[list[_Run]] = []
    for members in groups.values():
        members.sort(key=lambda r: r.start)
        for offset in (0, 1):
            pairs: list[_Run | None] = []
            for a, b in zip(members[offset::2], members[offset + 1 :: 2], strict=False):
                if a.end < b.start and _signature(a, nodes) != _signature(b, nodes) and _feeds(a, b, nodes):
                    pairs.append(_pair(a, b, nodes))
                else:
                    pairs.append(None)
            chain: list[_Run] = []
            for pair in [*pairs, None]:
                if pair is not None and (not chain or _follows(chain[-1], pair, nodes)):
                    chain.append(pair)
                    continue
                if len(chain) > 1:
                    chains.append(chain)
                chain = [pair] if pair is not None else []
    return chains


def _pair(a: _Run, b: _Run, nodes: list[fx.Node]) -> _Run:
    """The unit of calls ``a`` then ``b``: their nodes and the glue carrying a's output into b. Other nodes
    between them (Bria-Fibo 2 slicing the text bundle for the second call) are inputs of the unit, as they are
    of a single block, so that pairs differing only in what they read stay structurally identical."""
    carried = _glue_fed(a, b, nodes)
    glue = [n for n in nodes[a.end + 1 : b.start] if n in carried]
    members = [*_block_of(a, nodes).nodes, *glue, *_block_of(b, nodes).nodes]
    return _Run(a.instance, f"{a.path}+{b.path}", a.class_name, a.start, b.end, members=members)


def _feeds(prev: _Run, run: _Run, nodes: list[fx.Node]) -> bool:
    return any(inp in _glue_fed(prev, run, nodes) for inp in _block_of(run, nodes).inputs)


# Between two blocks of a stack only glue may stand: views, concatenations, and the elementwise ops of a
# residual connection written in the parent (x = x + block(x)); no matmul, attention or normalisation.
GLUE_OPS = STRUCTURAL_OPS | {"add", "add_", "sub", "mul", "div", "neg"}


def _glue_fed(prev: _Run, run: _Run, nodes: list[fx.Node]) -> set[fx.Node]:
    """Values ``prev``'s outputs reach through glue alone before ``run`` starts."""
    glue = [n for n in nodes[prev.end + 1 : run.start] if is_compute(n) and op_name(n) in GLUE_OPS]
    return descendants(_block_of(prev, nodes).outputs, within=set(glue))


def _follows(prev: _Run, run: _Run, nodes: list[fx.Node]) -> bool:
    """``run`` repeats ``prev`` and reads its output directly or through glue (not through other compute:
    to_v and to_out of one attention are not a stack)."""
    if prev.end >= run.start or _signature(prev, nodes) != _signature(run, nodes):
        return False
    return _feeds(prev, run, nodes)


def _top_level(chains: list[list[_Run]]) -> list[list[_Run]]:
    def inside(chain: list[_Run], other: list[_Run]) -> bool:
        return chain is not other and any(r.start <= chain[0].start and chain[-1].end <= r.end for r in other)

    return [c for c in chains if not any(inside(c, o) for o in chains)]


def _make_stack(chain: list[_Run], nodes: list[fx.Node]) -> Stack:
    blocks = [_block_of(r, nodes) for r in chain]
    n_slots = len(blocks[0].inputs)
    fed = [_glue_fed(prev, run, nodes) for prev, run in itertools.pairwise(chain)]
    stream_slots = [k for k in range(n_slots) if all(b.inputs[k] in f for b, f in zip(blocks[1:], fed, strict=True))]
    shared = [k for k in range(n_slots) if len({b.inputs[k] for b in blocks}) == 1]
    return Stack(blocks, chain[0].class_name.rsplit(".", 1)[-1], stream_slots, shared)


def _select(chains: list[list[_Run]], nodes: list[fx.Node]) -> list[list[_Run]]:
    """The largest chain plus the chains directly before/after it in the dataflow (e.g. Flux's two stacks)."""
    ordered = sorted(chains, key=lambda c: c[0].start)
    sizes = [sum(len(_block_of(r, nodes).nodes) for r in c) for c in ordered]
    best = max(range(len(ordered)), key=lambda i: sizes[i])
    lo = hi = best
    while hi + 1 < len(ordered) and _follows_chain(ordered[hi], ordered[hi + 1], nodes):
        hi += 1
    while lo > 0 and _follows_chain(ordered[lo - 1], ordered[lo], nodes):
        lo -= 1
    return ordered[lo : hi + 1]


def _follows_chain(a: list[_Run], b: list[_Run], nodes: list[fx.Node]) -> bool:
    """Chain ``b`` continues chain ``a`` when b's hidden streams come from a's last block through glue only
    (views, concatenations): not through other computation, and not just through conditioning (a small MLP
    whose output feeds the blocks' modulation is not part of the stack)."""
    if a[-1].end >= b[0].start:
        return False
    feeding = _glue_fed(a[-1], b[0], nodes)
    b_stack = _make_stack(b, nodes)
    streams = [b_stack.blocks[0].inputs[k] for k in b_stack.stream_slots]
    return any(inp in feeding for inp in streams)


def analyze(gm: fx.GraphModule, user_inputs: list[str]) -> BlockStack:
    nodes = list(gm.graph.nodes)
    runs = _collect_runs(nodes)
    chains = _top_level(_find_chains(nodes, runs) + _find_alternating_chains(nodes, runs))
    if not chains:
        raise NoStackError(_no_stack_message(nodes, runs), "no stack of repeated blocks")
    selected = _select(chains, nodes)
    stacks = [_make_stack(c, nodes) for c in selected]
    start, end = selected[0][0].start, selected[-1][-1].end
    position = {n: i for i, n in enumerate(nodes)}
    region = [n for n in nodes[start : end + 1] if is_compute(n)]
    region_inputs, region_outputs = boundary(region)
    first = stacks[0]
    stream_inputs = [first.blocks[0].inputs[k] for k in first.stream_slots]
    if not region_outputs or not stream_inputs:
        raise UnsupportedGraphError(
            f"found {first.describe()} but it has no hidden stream in and out; graphcache needs blocks that "
            "read the previous block's output and a stack output used after the stack"
        )
    _check_share(nodes, region, stacks)
    timestep = find_timestep(gm, user_inputs)
    shared = [first.blocks[0].inputs[k] for k in first.shared_slots]
    modulation = [n for n in shared if n is not timestep and _depends_on(n, timestep)]
    prologue = [n for n in nodes if is_compute(n) and position[n] < start]
    epilogue = [n for n in nodes if is_compute(n) and position[n] > end]
    return BlockStack(
        stacks, region, region_inputs, region_outputs, stream_inputs, prologue, epilogue, timestep, modulation
    )


def _check_share(nodes: list[fx.Node], region: list[fx.Node], stacks: list[Stack]) -> None:
    """Refuse a stack that holds too little of the step's work (:mod:`passes.cost`): caching it would not pay
    (a U-Net's few repeated ResNet blocks; DeepCache is the U-Net policy)."""
    total = flops(n for n in nodes if is_compute(n))
    if total <= 0:  # the cost model knows none of the ops: nothing to say
        return
    share = flops(region) / total
    if share < MIN_REGION_SHARE:
        found = "; ".join(s.describe() for s in stacks)
        raise SmallStackError(
            f"the stack of repeated blocks found ({found}) holds {share:.0%} of the step's multiply-accumulate "
            f"work: a cached step would still cost {1 - share:.0%} of a computed one. graphcache caches stacks "
            f"that hold at least {MIN_REGION_SHARE:.0%}; for a U-Net use policy 'deepcache' (the deep path "
            "behind a skip connection)", f"a stack of {share:.0%} of the work",
        )


def _depends_on(node: fx.Node, source: fx.Node) -> bool:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n is source:
            return True
        for inp in n.all_input_nodes:
            if inp not in seen:
                seen.add(inp)
                todo.append(inp)
    return False


def _no_stack_message(nodes: list[fx.Node], runs: list[_Run]) -> str:
    n_compute = sum(1 for n in nodes if is_compute(n))
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        counts[run.class_name.rsplit(".", 1)[-1]] += 1
    repeated = sorted(((c, k) for k, c in counts.items() if c > 1), reverse=True)[:5]
    seen = ", ".join(f"{c} x {k}" for c, k in repeated) or "none"
    return (
        f"no stack of repeated blocks found in a graph of {n_compute} compute nodes (classes with several "
        f"submodule calls: {seen}). graphcache requires at least 2 consecutive calls of structurally identical "
        "submodules (same ops, same parameter shapes), each reading the previous one's output, as in DiT / "
        "MMDiT / Flux transformer blocks; capture the denoiser itself with module metadata (torch.export or "
        "torch.compile)"
    )


@dataclasses.dataclass(frozen=True)
class FindBlockStack(Pass):
    """Record the :class:`BlockStack` of the graph under ``gm.meta['graphcache']['block_stack']``."""

    name = "find_block_stack"
    requires = ("user_inputs",)
    provides = ("block_stack",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        found.block_stack = analyze(gm, found.user_inputs or [])
        return PassResult(gm, modified=False)
