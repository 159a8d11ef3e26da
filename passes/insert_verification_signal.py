"""Transform pass: SpeCa's verification, the last block run on the forecast of its input, as signals.

Preconditions: ``block_stack``, ``cache_plan`` (Delta-DiT's units split before the last block: ``front*`` =
stream entering the last block - stream entering the region, ``rear*`` = region output - stream entering
the last block) and ``state``. Postcondition: before the region, the predictor forecasts both deltas for
the step about to run (clock: step + 1, the computed-step history), a copy of the last block runs on
``in + front_hat``, and per sample ``e = ||real - out_hat||_2 / ||real||_2`` (``out_hat = in + front_hat +
rear_hat``; the largest over the hidden streams) and the steps since that sample's last computed step are
recorded in ``signals``. The last block reads nothing computed by earlier blocks except its streams.
The copy runs on every step (SpeCa's verification cost: one block per step).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from graphcache.analyses import CachePlan, StateSpec
from graphcache.blockstack import BlockStack
from graphcache.errors import UnsupportedGraphError
from graphcache.predictors import Clock, Predictor, Reuse, call

from .base import Pass, PassResult, analysis, mark_new
from .dead_code import storage_key, written_args
from .graph_utils import batched_val, emit_traced, refuse_unbranchable


def relative_l2(real: torch.Tensor, forecast: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||real - forecast||_2 / ||real||_2`` over all but the batch dimension."""
    return (real - forecast).flatten(1).norm(dim=1) / real.flatten(1).norm(dim=1)


def _forecast(g: fx.Graph, predictor: Predictor, states: list[fx.Node], clock: Clock, like: fx.Node) -> fx.Node:
    val = batched_val(like, "SpeCa's verification")
    return predictor.on_cached(g, states, clock.shaped(g, val.dim(), val.dtype))[0]


@dataclasses.dataclass(frozen=True)
class InsertVerificationSignal(Pass):
    predictor: Predictor = dataclasses.field(default_factory=Reuse)
    name = "insert_verification_signal"
    requires = ("block_stack", "cache_plan", "state")
    provides = ("signals",)

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        stack, plan, state = found.require(BlockStack), found.require(CachePlan), found.require(StateSpec)
        st = stack.stacks[-1]
        last = st.blocks[-1]
        region = set(stack.region)
        block_nodes = set(last.nodes)
        units = {u.name: u for u in plan.units}
        front = [u for name, u in units.items() if name.startswith("front")]
        rear = [u for name, u in units.items() if name.startswith("rear")]
        if any(u.base is None for u in [*front, *rear]) or any(u.node not in block_nodes for u in rear):
            raise UnsupportedGraphError("SpeCa needs the region outputs computed by the last block from streams "
                                        "of the same shape as the region's inputs")
        refuse_unbranchable(last.nodes)  # the last block is copied for the verification
        leading = {batched_val(u.node, "SpeCa's verification").shape[0] for u in rear}
        if len(leading) > 1:  # one error per sample needs every stream laid out by sample (not packed tokens)
            raise UnsupportedGraphError(
                f"SpeCa: the region outputs have different leading dimensions {sorted(leading)}; its per-sample "
                "error needs every hidden stream laid out by sample")
        outside = [a for a in last.inputs if a in region and a not in {u.node for u in front}]
        if outside:
            raise UnsupportedGraphError(f"SpeCa: the last block reads {outside[0].name}, computed by an earlier block")
        graph = gm.graph
        before = set(graph.nodes)
        with graph.inserting_before(stack.region[0]):
            step = call(graph, torch.ops.aten.add.Tensor, state.step, 1)
            clock = Clock(step, state.history, state.n_computed)
            env: dict[fx.Node, fx.Node] = {}
            for u in front:
                delta = _forecast(graph, self.predictor, state.caches[u.name], clock, u.node)
                env[u.node] = call(graph, torch.ops.aten.add.Tensor, u.base, delta)
            others = {storage_key(n) for n in before if n not in block_nodes}  # the rest of the model's tensors
            forecast = {u.node for u in front}  # inputs the copy reads as fresh forecast tensors
            for node in last.nodes:
                writes = written_args(node)  # an in-place write (rotary ``out[..., 0::2] = ...``) has no users
                if not node.users and not writes:  # export's shape asserts: not copied
                    continue
                shared = [w for w in writes if w not in forecast and storage_key(w) in others | {None}]
                if shared:
                    raise UnsupportedGraphError(
                        f"SpeCa: the last block writes '{shared[0].name}' in place, a tensor it shares with the rest "
                        "of the model; its copy for the verification would change what the model computes")
                env[node] = graph.node_copy(node, lambda a: env.get(a, a))
            errors = []
            for u in rear:
                assert u.base is not None  # checked above
                delta = _forecast(graph, self.predictor, state.caches[u.name], clock, u.node)
                out_hat = call(graph, torch.ops.aten.add.Tensor, env[u.base], delta)
                errors.append(emit_traced(graph, relative_l2, [env[u.node], out_hat]))
            error = errors[0]
            for other in errors[1:]:
                error = call(graph, torch.ops.aten.maximum.default, error, other)
            latest = call(graph, torch.ops.aten.select.int, state.history, -1, 0)
            since = call(graph, torch.ops.aten.sub.Tensor, step, latest)
            since = call(graph, torch.ops.aten.add.Tensor, since, call(graph, torch.ops.aten.zeros_like.default, error))
        mark_new(graph, before, self.name, "decision")
        found.add_signal("error", error, self.name)
        found.add_signal("since", since, self.name)
        return PassResult(gm, modified=True)
