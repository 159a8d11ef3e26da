"""Transform pass: the probe's residual change as a per-sample signal for the decision (FBCache, DBCache).

Precondition: ``probe`` and ``state``. Postcondition: a buffer ``_gc_probe_ref`` (the probe residual at the
last computed step) and, in the outer graph before the region, ``rel = mean|r - r_ref| / mean|r_ref|`` per
sample (``r = probe output - probe input``) recorded in ``signals``; ``refresh_on_compute`` gets
``(_gc_probe_ref, r)``: the reference moves only on computed steps. A sample with no reference yet (zero
reference) gets ``inf`` and so a compute step.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx as fx

from graphcache.analyses import Probe, StateSpec
from graphcache.blockstack import BlockStack

from .base import Pass, PassResult, analysis, mark
from .graph_utils import emit_traced, relative_l1, tensor_val


@dataclasses.dataclass(frozen=True)
class InsertProbeIndicator(Pass):
    name = "insert_probe_indicator"
    requires = ("probe", "state", "block_stack")
    provides = ("signals", "refresh_on_compute")

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = analysis(gm)
        probe, stack = found.require(Probe), found.require(BlockStack)
        val = tensor_val(probe.outputs[0])
        assert val is not None
        graph = gm.graph
        ref = found.require(StateSpec).add(gm, "_gc_probe_ref", torch.empty(val.shape, dtype=val.dtype,
                                                                              device=val.device),
                                           stack.region[0], self.name)
        with graph.inserting_before(stack.region[0]):
            residual = graph.call_function(torch.ops.aten.sub.Tensor, (probe.outputs[0], probe.inputs[0]))
            before = set(graph.nodes)
            rel = emit_traced(graph, relative_l1, [residual, ref])
        for node in graph.nodes:
            if node not in before or node in (ref, residual):
                mark(node, self.name, "decision")
        found.add_signal("change", rel, self.name)
        found.refresh_on_compute.append((ref, residual))
        return PassResult(gm, modified=True)
