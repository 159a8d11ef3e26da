"""torch.compile(fullgraph=True): one graph, 0 graph breaks, 0 recompiles over two 20-step generations."""

from __future__ import annotations

import copy
import gc
import subprocess
import sys

import pytest
import torch

import graphcache
from graphcache.backend import make_backend
from graphcache.policies.fora import FORA
from graphcache.state import states_of

from helpers import generation, timesteps
from models import tiny_dit, tiny_flux


def _two_generations(compiled, inputs, steps=20):
    ts = timesteps(steps)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = generation(compiled, inputs, ts)
        second = generation(compiled, inputs, ts)
    return first, second


@pytest.mark.parametrize("inner", ["aot_eager", "inductor"])
def test_fullgraph_one_graph_no_recompiles(inner):
    model, inputs = tiny_dit(num_layers=2)
    states: list = []
    compiled = torch.compile(model, backend=make_backend("fora", inner, states), fullgraph=True)
    first, second = _two_generations(compiled, inputs)
    assert len(states) == 1, "the backend compiled more than one graph"
    expected = ["computed" if c else "cached" for c in FORA().expected(20)]
    assert states[0].decisions() == expected
    reference = generation(model, inputs, timesteps(20))
    for out, ref, decision in zip(second, reference, expected, strict=True):
        if decision == "computed":
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_flux_compiles_with_inductor():
    model, inputs = tiny_flux(dual=1, single=2)
    cached = graphcache.optimize(model, "fora", backend="inductor", granularity="block")
    _, second = _two_generations(cached, inputs, steps=6)
    assert len(cached.states) == 1
    assert graphcache.decisions(cached) == ["computed", "cached", "cached"] * 2
    reference = generation(model, inputs, timesteps(6))
    torch.testing.assert_close(second[3], reference[3], rtol=1e-5, atol=1e-5)


def test_backend_name_resolves_without_import():
    """``backend="graphcache"`` works in a fresh interpreter that never imported graphcache."""
    code = (
        "import sys, torch; from torch._dynamo.backends.registry import lookup_backend;"
        "assert 'graphcache' not in sys.modules; fn = lookup_backend('graphcache');"
        "print(fn.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "graphcache.backend"


def test_torch_compile_backend_string_with_options():
    model, inputs = tiny_dit(num_layers=2)
    compiled = torch.compile(model, backend="graphcache", fullgraph=True,
                             options={"policy": "fora", "interval": 2, "backend": "eager"})
    generation(compiled, inputs, timesteps(5))
    assert graphcache.decisions(compiled) == ["computed", "cached", "computed", "cached", "computed"]


def test_two_compilations_of_one_model_keep_their_own_decisions_and_reset():
    model, inputs = tiny_dit(num_layers=2)
    every_3 = torch.compile(model, backend="graphcache", options={"backend": "eager"})
    every_2 = torch.compile(model, backend="graphcache", options={"backend": "eager", "interval": 2})
    generation(every_3, inputs, timesteps(4))
    generation(every_2, inputs, timesteps(3))
    assert graphcache.decisions(every_3) == ["computed", "cached", "cached", "computed"]
    assert graphcache.decisions(every_2) == ["computed", "cached", "computed"]
    graphcache.reset(every_2)
    assert graphcache.decisions(every_2) == []
    assert graphcache.decisions(every_3) == ["computed", "cached", "cached", "computed"]


def test_two_models_of_one_class_compiled_alike_keep_their_own_state():
    """Dynamo hands the graph compiled for the first model to the second (same class, equal options; the
    parameters are inputs): the state must still be each model's (as Wan 2.2's two transformers need). Before,
    the second model's cached steps reused the first one's features."""
    first, inputs = tiny_dit(num_layers=2, seed=0)
    second, _ = tiny_dit(num_layers=2, seed=1)
    options = {"interval": 2, "backend": "eager"}
    ts = timesteps(5)
    alone = [generation(torch.compile(copy.deepcopy(m), backend="graphcache", options=options), inputs, ts)
             for m in (first, second)]
    torch._dynamo.reset()
    a = torch.compile(first, backend="graphcache", options=options)
    b = torch.compile(second, backend="graphcache", options=options)
    with torch.no_grad():
        outs = [(a(**inputs(t)).sample, b(**inputs(t)).sample) for t in ts]  # in turn, at the same timesteps
    for k, (x, y) in enumerate(outs):
        assert torch.equal(x, alone[0][k]) and torch.equal(y, alone[1][k]), k
    assert graphcache.decisions(a) == graphcache.decisions(b) == ["computed", "cached"] * 2 + ["computed"]
    graphcache.reset(a)
    assert graphcache.decisions(a) == [] and len(graphcache.decisions(b)) == 5
    (state,) = states_of(first)
    assert "model 1: first stream" in state.streams.sets.contexts()
    del b, second, _
    gc.collect()
    with torch.no_grad():
        a(**inputs(ts[0]))
    assert state.streams.sets.contexts() == [""]  # the second model's saved state went at the next call


def test_export_route_compiled_with_inductor():
    """The CLI's route: torch.export capture, rewrite, torch.compile(fullgraph=True) of the rewritten graph."""
    from graphcache.runner import compare

    model, inputs = tiny_dit(num_layers=2)
    with torch._dynamo.config.patch(error_on_recompile=True):
        result = compare(model, inputs, FORA(interval=2), steps=6, backend="inductor")
    assert result.decisions == ["computed", "cached"] * 3
    for err, decision in zip(result.errors(), result.decisions, strict=True):
        if decision == "computed":
            assert err < 1e-5


def test_a_skipped_forward_is_refused_by_name():
    """Dynamo skips a class's forward after another compile of it broke inside a loop (diffusers' compiled
    hooks): a one-graph compile then hands over a nested function's graph. Refused, naming why."""
    from graphcache.errors import UnsupportedGraphError

    model, inputs = tiny_dit(num_layers=3)
    code = type(model).forward.__code__
    torch._dynamo.eval_frame.skip_code(code)
    try:
        fast = graphcache.optimize(model, "fora", backend="eager")
        with pytest.raises(UnsupportedGraphError, match=r"dynamo is skipping DiTTransformer2DModel.forward"):
            fast(**inputs(999))
    finally:
        torch._C._dynamo.eval_frame.reset_code(code)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fora", backend="eager")
    assert torch.equal(fast(**inputs(999)).sample, model(**inputs(999)).sample)  # after a reset: one graph again


def test_backend_checks_a_calibration_against_the_compiled_model(tmp_path):
    """``torch.compile(model, backend="graphcache")`` reads the model from the frame dynamo compiles, so a
    calibration made for another model is refused there as ``graphcache.optimize`` refuses it, whether the
    module or its ``forward`` is compiled; the model's own calibration compiles. Around a function the module
    cannot be read: a warning says the file was not checked. (Dynamo wraps what a backend raises.)"""
    from graphcache import calibration
    from graphcache.errors import PolicyConfigError

    model, inputs = tiny_dit(num_layers=2)
    other, _ = tiny_dit(num_layers=3)
    flat = {"timesteps": [-1.0e6, 1.0e6], "ratios": [0.99, 1.01], "steps": 7}
    theirs = str(calibration.save(tmp_path / "other.json", other, 7, magcache=flat))
    ours = str(calibration.save(tmp_path / "ours.json", model, 7, magcache=flat))

    def compiled(target, path):
        torch._dynamo.reset()
        return torch.compile(target, backend="graphcache",
                             options={"policy": "magcache", "calibration": path, "backend": "eager"})

    with torch.no_grad():
        for target in (model, model.forward):
            with pytest.raises(torch._dynamo.exc.BackendCompilerFailed,
                               match=r"other.json was calibrated for another model") as raised:
                compiled(target, theirs)(**inputs(999.0))
            assert isinstance(raised.value.inner_exception, PolicyConfigError)  # dynamo wraps a backend's error
        assert torch.equal(compiled(model, ours)(**inputs(999.0)).sample, model(**inputs(999.0)).sample)
        with pytest.warns(UserWarning, match=r"the calibration .*other.json was not checked"):
            compiled(lambda **kw: model(**kw).sample, theirs)(**inputs(999.0))
    torch._dynamo.reset()
