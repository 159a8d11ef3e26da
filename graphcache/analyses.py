"""The typed records passes hand to each other: :class:`Analyses` (``gm.meta["graphcache"]``, one field per
result, each written by the pass that ``provides`` it), and the types of its fields: what the cache state
holds, the decision's nodes, the cache plan, the probe. Passes import them from here, never from another pass.

``BlockStack`` (what ``find_block_stack`` found) lives in :mod:`graphcache.blockstack`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.fx as fx

from graphcache.blockstack import BlockStack
from graphcache.errors import PassError
from graphcache.passes.base import mark


@dataclasses.dataclass
class StateSpec:
    step: fx.Node
    last_t: fx.Node
    log: fx.Node
    history: fx.Node
    n_computed: fx.Node
    caches: dict[str, list[fx.Node]]  # unit name -> predictor state nodes
    buffers: list[str]
    fills: dict[str, float] = dataclasses.field(default_factory=dict)  # value of a buffer at a new start
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))  # every buffer lives there

    def add(self, gm: fx.GraphModule, name: str, value: torch.Tensor, anchor: fx.Node, pass_name: str,
            fill: float = 0.0, device: torch.device | None = None) -> fx.Node:
        """Register a state buffer (filled with ``fill``) that ``reset()`` and the exports know about, on the
        model's device whatever device ``value`` was made on (a CPU buffer in a CUDA graph is refused by
        fake-tensor propagation, or costs a copy per step); ``device``: another device, for state only
        host-side arithmetic reads (the host clock of ``host_decision``)."""
        self.buffers.append(name)
        self.fills[name] = fill
        return add_state_buffer(gm, name, value.to(device or self.device).fill_(fill), anchor, pass_name)

    def cache_nodes(self) -> list[fx.Node]:
        return [n for nodes in self.caches.values() for n in nodes]


def add_state_buffer(gm: fx.GraphModule, name: str, value: torch.Tensor, anchor: fx.Node, pass_name: str) -> fx.Node:
    gm.register_buffer(name, value)
    with gm.graph.inserting_before(anchor):
        node = gm.graph.get_attr(name)
    node.meta["val"] = None
    return mark(node, pass_name, "state")


@dataclasses.dataclass
class Decision:
    pred: fx.Node
    updates: list[tuple[fx.Node, fx.Node]]  # (state buffer node, new value node), written after the cond
    clock: list[fx.Node]  # step index, computed-step history, computed steps so far: operands of both branches
    sample_mask: fx.Node | None = None  # per-sample compute mask [B] (dynamic policies)
    # a static schedule (no signals, no accumulators): the bound rule, ``rule(i)`` or ``rule(i, t)`` with
    # ``reads_timestep``, that host_decision traces again onto a host copy of the clock
    static_rule: Callable[..., Any] | None = None
    reads_timestep: bool = False
    pooled: str | None = None  # why the signals' rows decide together (they are not the batch's samples)


@dataclasses.dataclass(frozen=True)
class HostDecision:
    """host_decision's result. Applied (``conds > 0``): the conds read a predicate computed on the host, and
    the backend writes the call's timestep (graph input ``timestep``, read on the host) into CPU buffer
    ``buffer`` before every call. Else ``why_not`` says why the predicate stays on the device."""

    conds: int = 0  # conds whose predicate moved to the host
    timestep: str = ""  # the placeholder whose value the host clock reads
    buffer: str = ""  # the CPU buffer it is written into
    why_not: str | None = None
    pred: str = ""  # the host predicate node the conds read


@dataclasses.dataclass
class CacheUnit:
    """One cached tensor: ``node`` is its value in the region; ``base`` the stream input it is a residual on."""

    name: str
    node: fx.Node
    base: fx.Node | None = None


@dataclasses.dataclass(frozen=True)
class StepBelow:
    """Step test ``step < boundary`` (Delta-DiT's stage boundary)."""

    boundary: int

    def emit(self, g: fx.Graph, step: fx.Node) -> fx.Node:
        return g.call_function(torch.ops.aten.lt.Scalar, (step, self.boundary))


@dataclasses.dataclass(frozen=True)
class StepResidue:
    """Step test ``step % modulus in residues`` (PAB's per-kind recompute ranges)."""

    modulus: int
    residues: tuple[int, ...]

    def emit(self, g: fx.Graph, step: fx.Node) -> fx.Node:
        phase = g.call_function(torch.ops.aten.remainder.Scalar, (step, self.modulus))
        hits = [g.call_function(torch.ops.aten.eq.Scalar, (phase, r)) for r in self.residues]
        return functools.reduce(lambda a, b: g.call_function(torch.ops.aten.logical_or.default, (a, b)), hits)


StepTest = StepBelow | StepResidue


@dataclasses.dataclass(frozen=True)
class Phase:
    """The units a cached step replaces while ``when`` holds (the other units' blocks run); the last phase
    of a plan has ``when=None`` and takes the remaining cached steps."""

    units: frozenset[str]
    when: StepTest | None = None


@dataclasses.dataclass
class CachePlan:
    granularity: str
    units: list[CacheUnit]
    phases: tuple[Phase, ...] | None = None  # None: a cached step uses every unit
    refresh_running: bool = False  # a cached step's running units refresh their state (else it is kept)


@dataclasses.dataclass
class Probe:
    inputs: list[fx.Node]  # hidden streams entering the probe
    outputs: list[fx.Node]  # the same streams leaving it (= stream inputs of the cached region)


@dataclasses.dataclass(frozen=True)
class StateWrites:
    """What ``sink_state_writes`` did: cache buffers whose write moved into the branches, and the state bytes
    a cached step writes before (each buffer copied out of the branch and back) and after."""

    buffers: int
    cached_step_bytes_before: int
    cached_step_bytes_after: int


@dataclasses.dataclass
class SampleBuckets:
    """Captures of the model at smaller batch sizes, for per-sample decisions (a policy's ``buckets`` under
    ``graphcache.optimize``): a compute step gathers the samples that need it, needing ones first, into the
    smallest bucket that holds them and runs the blocks there, as the model's own graph at that batch size.
    ``graphs``: batch size -> the graph captured at it (meta vals propagated). ``insert_cache_branch`` writes
    ``used`` (the sizes the compute branch got) or ``reason`` (why it runs the whole batch instead)."""

    graphs: dict[int, fx.GraphModule]
    used: tuple[int, ...] = ()
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class LinearNarrowing:
    """What ``narrow_linear_outputs`` did to the cached branch: linears narrowed to the rows read, and the
    weight bytes a cached step no longer reads."""

    linears: int
    weight_bytes_saved: int


@dataclasses.dataclass(frozen=True)
class MatvecRewrite:
    """What ``matvec_reductions`` did to the cached branch: few-row linears written as multiply-and-sum
    reductions for Inductor, and the weight bytes they read per cached step."""

    linears: int
    weight_bytes: int


@dataclasses.dataclass
class Analyses:
    """What capture and the passes found and built, one typed field per result (``None`` / empty: not yet).

    Read and written as attributes (``analysis(gm).block_stack``); a pass reads a result it ``requires`` as
    ``analysis(gm).require(BlockStack)`` (typed, refused with the missing result's name when absent). Only
    the pass manager's ``requires`` / ``provides`` checks name fields as strings (``"block_stack" in found``,
    ``list(found)``), and a name that is not a field is refused: there is no free-form blackboard.
    """

    # capture
    user_inputs: list[str] | None = None  # placeholders that are user inputs (not parameters)
    capture: str | None = None  # "export" or "dynamo"
    input_sources: dict[str, str] | None = None  # dynamo: placeholder -> argument source
    side_timestep: str | None = None  # after a graph break: the extra timestep input's name
    timings: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)  # (what, s, propagation s)
    propagated: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (pass, nodes run, nodes)
    # analyses
    policy_choice: str | None = None  # the policy applied, when the one given chose another (``auto``), and why
    block_stack: BlockStack | None = None
    probe: Probe | None = None
    tail: int | None = None
    cache_plan: CachePlan | None = None
    sample_buckets: SampleBuckets | None = None  # captures at bucket batch sizes (graphcache.optimize)
    attention_kinds: dict[str, int] | None = None  # PAB: kind -> recompute range
    # transforms
    state: StateSpec | None = None
    signals: dict[str, fx.Node] = dataclasses.field(default_factory=dict)  # by the name the policy's rule reads
    refresh_on_compute: list[tuple[fx.Node, fx.Node]] = dataclasses.field(default_factory=list)
    refresh_always: list[tuple[fx.Node, fx.Node]] = dataclasses.field(default_factory=list)
    indicator: str | None = None  # TeaCache: the modulated input's node name (reports)
    decision: Decision | None = None
    cache_branch: dict[str, Any] | None = None
    dense_cond_operands: bool | None = None  # the lowering changed the graph
    state_writes: StateWrites | None = None  # sink_state_writes (torch.compile lowerings)
    narrowed_linears: LinearNarrowing | None = None  # narrow_linear_outputs
    matvec_reductions: MatvecRewrite | None = None  # matvec_reductions (Inductor on CPU)
    host_decision: HostDecision | None = None  # host_decision (torch.compile on an accelerator)

    def require(self, kind: type[_T]) -> _T:
        """The result of type ``kind`` (a :class:`BlockStack`, :class:`CachePlan`, :class:`StateSpec`,
        :class:`Decision` or :class:`Probe`); :class:`PassError` when no pass recorded it yet."""
        name = _FIELD_OF_TYPE.get(kind)
        if name is None:
            raise PassError(f"no analysis result has type {kind.__name__}; typed results: "
                            f"{', '.join(t.__name__ for t in _FIELD_OF_TYPE)}")
        value = getattr(self, name)
        if value is None:
            raise PassError(f"the analysis result {name!r} ({kind.__name__}) is not there yet; run the pass that "
                            "provides it first (passes/README.md lists the order)")
        assert isinstance(value, kind)
        return value

    def add_signal(self, name: str, node: fx.Node, pass_name: str) -> None:
        """Record a decision signal under the name of the rule parameter that reads it."""
        if name in self.signals:
            raise PassError(f"pass '{pass_name}' records decision signal {name!r}, which an earlier pass recorded "
                            f"(signals so far: {', '.join(self.signals)})")
        self.signals[name] = node

    def _field(self, key: str) -> str:
        if key not in self.__dataclass_fields__:
            raise PassError(f"{key!r} is not an analysis result; the results are {', '.join(self.__dataclass_fields__)}"
                            " (graphcache/analyses.py)")
        return key

    def __contains__(self, key: object) -> bool:
        """Whether the result is there: a ``None`` field is not; a list or dict field (default empty) is once non-empty.
        A result that is an empty list in an optional field (a graph with no user input) is there."""
        name = self._field(str(key))
        value = getattr(self, name)
        if self.__dataclass_fields__[name].default is None:
            return value is not None
        return len(value) > 0

    def __iter__(self) -> Iterator[str]:
        return iter([k for k in self.__dataclass_fields__ if k in self])


_T = TypeVar("_T")
_FIELD_OF_TYPE: dict[type, str] = {BlockStack: "block_stack", Probe: "probe", CachePlan: "cache_plan",
                                   StateSpec: "state", Decision: "decision"}
