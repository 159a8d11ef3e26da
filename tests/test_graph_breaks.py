"""Models that do not fit one graph: breaks outside the cached region are allowed (the graph holding the blocks
is rewritten, the others run as torch.compile makes them); breaks inside the blocks are refused by name."""

from __future__ import annotations

import pytest
import torch

import graphcache
from graphcache.errors import UnsupportedGraphError

from helpers import generation, timesteps
from models import HandWrittenDiT


class BreakBeforeBlocks(HandWrittenDiT):
    """A data-dependent Python branch in the prologue, after the time embedding (as masks built from sequence
    lengths are): torch.compile splits the model there."""

    def forward(self, latent: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        if float(latent.abs().amax()) > 1e6:  # .item(): a graph break
            latent = latent / 1e6
        return super().forward(latent, noise_level)


class BreakInsideBlocks(HandWrittenDiT):
    def between_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.abs().amax()) > 1e6:  # data-dependent Python between every pair of blocks
            x = x / 2
        return x


def _inputs(batch: int = 2):
    x = torch.randn(batch, 10, 4, generator=torch.Generator().manual_seed(1))
    return lambda t: {"latent": x, "noise_level": torch.full((batch,), t)}


def test_graph_break_before_the_blocks_is_allowed_and_reported():
    torch.manual_seed(0)
    model, inputs = BreakBeforeBlocks().eval(), _inputs()
    ts = timesteps(7)
    reference = generation(model, inputs, ts)
    fast = graphcache.optimize(model, "fora", backend="eager")
    with pytest.warns(UserWarning, match=r"does not fit one graph; torch.compile made 2 graphs .*the cached region"):
        outputs = generation(fast, inputs, ts)
    decisions = graphcache.decisions(fast)
    assert decisions == ["computed", "cached", "cached"] * 2 + ["computed"]
    assert [torch.equal(o, r) for o, r in zip(outputs, reference, strict=True)] == [d == "computed" for d in decisions]
    assert len(fast.states) == 1 and len(fast.pieces) == 2


def test_graph_breaks_between_the_blocks_are_refused_by_name():
    torch.manual_seed(0)
    model, inputs = BreakInsideBlocks().eval(), _inputs()
    fast = graphcache.optimize(model, "fora", backend="eager")
    with pytest.raises(UnsupportedGraphError, match=r"none of the \d+ graphs torch.compile made of it holds the "
                                                    r"stack of repeated blocks.*Graph breaks:"):
        fast(**inputs(999.0))


class NonzeroBeforeBlocks(HandWrittenDiT):
    """Tokens selected by a boolean mask in the prologue (a data-dependent shape, as masks built from
    sequence lengths are)."""

    def forward(self, latent: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        keep = torch.nonzero(latent[0, :, 0] > -1e9).squeeze(-1)
        return super().forward(latent[:, keep], noise_level)


def test_a_data_dependent_shape_outside_the_blocks():
    """torch.compile breaks the graph at nonzero by default: the blocks' graph is rewritten. When dynamo is told
    to capture such ops in the graph, graphcache refuses by name instead of failing in shape propagation."""
    torch.manual_seed(0)
    model, inputs = NonzeroBeforeBlocks().eval(), _inputs()
    ts = timesteps(4)
    reference = generation(model, inputs, ts)
    fast = graphcache.optimize(model, "fora", backend="eager")
    with pytest.warns(UserWarning, match="does not fit one graph"):
        outputs = generation(fast, inputs, ts)
    assert graphcache.decisions(fast) == ["computed", "cached", "cached", "computed"]
    assert torch.equal(outputs[0], reference[0]) and torch.equal(outputs[3], reference[3])


def test_a_graph_that_computes_shapes_from_values_is_refused_by_name():
    """A graph holding nonzero (dynamo captures it when told to): refused with the node, not a traceback from
    shape propagation."""
    from graphcache.capture import prepare_dynamo_graph
    from graphcache.errors import DataDependentShapeError

    captured = []

    def keep(gm, example_inputs):
        captured.append((gm, example_inputs))
        return gm.forward

    def select(x):
        return x[torch.nonzero(x[:, 0] > 0).squeeze(-1)].sum(0)

    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        torch.compile(select, backend=keep, fullgraph=True)(torch.randn(6, 3))
    with pytest.raises(DataDependentShapeError, match=r"computes a shape from tensor values .*nonzero"):
        prepare_dynamo_graph(*captured[0])


class LazyTableOnFirstCall(HandWrittenDiT):
    """A table filled on the first call under ``with torch.device("cpu")`` (Z-Image's rope table): dynamo
    cannot enter that context manager, but from the second call the model fits one graph."""

    def forward(self, latent: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        if getattr(self, "table", None) is None:
            with torch.device("cpu"):
                self.table = torch.ones(latent.shape[-1])
        return super().forward(latent * self.table, noise_level)


def test_a_cache_filled_on_the_first_call_gets_one_graph_after_an_eager_call():
    torch.manual_seed(0)
    model, inputs = LazyTableOnFirstCall().eval(), _inputs()
    ts = timesteps(7)
    fast = graphcache.optimize(model, "fora", backend="eager")
    outputs = generation(fast, inputs, ts)  # no graph-break warning: one graph
    assert fast.pieces == [] and len(fast.states) == 1
    assert fast.notes and "after a first eager call" in fast.notes[0] and "context manager" in fast.notes[0]
    decisions = graphcache.decisions(fast)
    assert decisions == ["computed", "cached", "cached"] * 2 + ["computed"]
    reference = generation(model, inputs, ts)
    assert [torch.equal(o, r) for o, r in zip(outputs, reference, strict=True)] == [d == "computed" for d in decisions]


class BreakAfterTimeEmbedding(HandWrittenDiT):
    """The graph break falls between the time embedding and the blocks (Lumina 2, OmniGen: masks from
    sequence lengths): the blocks' graph gets the embedding, not the timestep."""

    def forward(self, latent: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
        angles = noise_level.float()[:, None] * freqs[None]
        c = self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))
        if float(latent.abs().amax()) > 1e6:  # .item(): a graph break
            latent = latent / 1e6
        x = self.embed_in(latent)
        for layer in self.trunk:
            x = layer(x, c)
        return self.head(torch.nn.functional.layer_norm(x, x.shape[-1:]))


@pytest.mark.parametrize("steps", [timesteps(7), [t / 1000 for t in reversed(timesteps(7))]],
                         ids=["decreasing", "increasing"])
def test_blocks_after_a_break_read_the_timestep_from_the_call(steps):
    """The call's timestep argument (found by name) is written into an extra input of the blocks' graph, so
    generations and decisions work as in one graph, in either direction of time."""
    torch.manual_seed(0)
    model, inputs = BreakAfterTimeEmbedding().eval(), _inputs()
    reference = generation(model, inputs, steps)
    fast = graphcache.optimize(model, "fora", backend="eager")
    with pytest.warns(UserWarning, match="does not fit one graph"):
        outputs = generation(fast, inputs, steps)
    again = generation(fast, inputs, steps)  # a second generation: detected from the timestep alone
    decisions = graphcache.decisions(fast)
    assert decisions == ["computed", "cached", "cached"] * 2 + ["computed"]
    assert [torch.equal(o, r) for o, r in zip(outputs, reference, strict=True)] == [d == "computed" for d in decisions]
    assert all(torch.equal(a, b) for a, b in zip(outputs, again, strict=True))
    (state,) = fast.states  # the blocks' graph runs its cached steps by its cached-step graph, inside dynamo
    assert state.compiled_cached_step.runs == 2 * decisions.count("cached")


def test_cfg_as_two_calls_after_a_break_keeps_a_stream_each():
    """Cond then uncond at each timestep, no contexts, on a model whose blocks' graph reads the side timestep:
    the second call at a timestep is the second stream from the very first step on."""
    torch.manual_seed(0)
    cond = _inputs()
    other = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(7))

    def uncond(t):
        return {**cond(t), "latent": other}

    ts = timesteps(7)
    fast = graphcache.optimize(BreakAfterTimeEmbedding().eval(), "fora", backend="eager")
    got_c, got_u = [], []
    with pytest.warns(UserWarning, match="does not fit one graph"), torch.no_grad():
        for t in ts:
            got_c.append(fast(**cond(t)))
            got_u.append(fast(**uncond(t)))
    for stream, got in ((cond, got_c), (uncond, got_u)):
        torch.manual_seed(0)
        alone = graphcache.optimize(BreakAfterTimeEmbedding().eval(), "fora", backend="eager")
        with pytest.warns(UserWarning, match="does not fit one graph"):
            expected = generation(alone, stream, ts)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
