"""A static schedule's cached steps run by a graph of their own (graphcache/cached_step.py): the same outputs
and decisions as the one graph, bit for bit, and never a cached step the graph's own clock would not take."""

from __future__ import annotations

import pytest
import torch

import graphcache
import graphcache.rewrite as rewrite
from graphcache.analyses import StateSpec
from graphcache.cached_step import OFF
from graphcache.cached_step_graph import cached_step_graph
from graphcache.call_checks import PathFetcher, module_path
from graphcache.host_schedule import DYNAMIC
from graphcache.passes.base import analysis
from graphcache.passes.host_decision import MoveDecisionToHost
from graphcache.state import compile_call_of, states_of

from helpers import timesteps
from models import tiny_dit, tiny_pixart


def _run(fast, calls):
    """``calls``: (timestep, inputs function, context or None); the outputs, cloned."""
    outs = []
    with torch.no_grad():
        for t, inputs, context in calls:
            if context is None:
                outs.append(fast(**inputs(t))[0].clone())
            else:
                with fast.cache_context(context):
                    outs.append(fast(**inputs(t))[0].clone())
    return outs


def _both(model, policy, calls, backend="eager"):
    """The calls through the one graph, then through a module with cached-step graphs: outputs, decisions of
    the second, and its first state's CachedStepGraph."""
    torch._dynamo.reset()
    one = graphcache.optimize(model, policy, backend=backend)
    one.cached_step_graph = False
    expected = _run(one, calls)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, policy, backend=backend)
    got = _run(fast, calls)
    assert graphcache.decisions(fast) == graphcache.decisions(one)
    return expected, got, fast


@pytest.mark.parametrize(("policy", "make", "backend"), [
    ("fora", tiny_dit, "inductor"),
    ("taylorseer{order=2}", tiny_dit, "aot_eager"),
    ("fora{granularity=block}", tiny_dit, "eager"),
    ("deltadit", tiny_dit, "eager"),  # a cond nested in the cached branch (the stage)
    ("pab{window_low=0,window_high=1000}", tiny_pixart, "eager"),  # two conds on the decision
    ("foca", tiny_dit, "aot_eager"),  # state kept out of the branch (a ring): no write-back on cached steps
    ("abcache{order=2}", tiny_dit, "eager"),
])
def test_cached_steps_through_their_own_graph_equal_the_one_graph(policy, make, backend):
    """Two generations (the second without reset) and guidance as two calls in contexts: every cached step
    after the first computed one runs the cached-step graph, and every output equals the one graph's."""
    model, inputs = make(num_layers=3) if make is tiny_pixart else make(num_layers=3, batch=2)
    ts = timesteps(7)
    calls = [(t, inputs, None) for t in ts] * 2 + [(t, inputs, c) for t in ts for c in ("cond", "uncond")]
    expected, got, fast = _both(model, policy, calls, backend)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    runner = fast.states[0].cached_step
    assert runner.why_not is None
    cached = graphcache.decisions(fast).count("cached")
    assert cached > 0 and runner.runs == 4 * cached  # two generations, then cond and uncond


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_torch_compile_with_the_graphcache_backend_runs_cached_steps_by_their_own_graph(backend):
    """``torch.compile(model, backend="graphcache")``: dynamo's guards run on every call, then the graph it
    calls runs a call the host finds cached by the cached-step graph. Outputs and decisions equal the one
    graph's (option ``cached_step_graph=False``), over two generations and two models sharing the graph."""
    first, inputs = tiny_dit(num_layers=3, batch=2, seed=0)
    second, _ = tiny_dit(num_layers=3, batch=2, seed=1)
    ts = timesteps(7)
    calls = [(t, inputs, None) for t in ts] * 2

    def both(options):
        torch._dynamo.reset()
        a, b = (torch.compile(m, backend="graphcache", fullgraph=True, options={"backend": backend, **options})
                for m in (first, second))
        return [_run(a, calls), _run(b, calls)], a, b

    expected, a, _ = both({"cached_step_graph": False})
    assert states_of(first, compile_call_of(a))[0].compiled_cached_step is None
    got, a, b = both({})
    assert all(torch.equal(x, y) for e, g in zip(expected, got, strict=True) for x, y in zip(e, g, strict=True))
    cached = graphcache.decisions(a).count("cached")
    assert graphcache.decisions(a) == graphcache.decisions(b) and cached > 0
    (state,) = states_of(first, compile_call_of(a))
    assert state.compiled_cached_step.runs == 2 * 2 * cached  # two generations of two models, one graph


def test_a_cached_step_graph_that_fails_to_compile_leaves_the_full_graph_in_charge(monkeypatch):
    """A failure compiling the cached-step graph is said once, and every step runs the full graph."""
    import graphcache.cached_step_graph as cached_step_graph

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    model, inputs = tiny_dit(num_layers=2, batch=2)
    ts = timesteps(5)
    torch._dynamo.reset()
    plain = torch.compile(model, backend="graphcache", options={"backend": "eager", "cached_step_graph": False})
    expected = _run(plain, [(t, inputs, None) for t in ts])
    monkeypatch.setattr(cached_step_graph, "compile_cached_step", fail)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="graphcache", options={"backend": "eager"})
    with pytest.warns(UserWarning, match=r"compiling the cached-step graph failed \(RuntimeError: boom\); cached "
                                         r"steps run the full graph"):
        got = _run(compiled, [(t, inputs, None) for t in ts])
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert graphcache.decisions(compiled) == ["computed", "cached", "cached", "computed", "cached"]


def test_the_cached_step_graph_takes_only_what_a_cached_step_reads():
    """FORA's cached step reads the prologue's and epilogue's inputs and the cache, not the blocks' weights;
    the blocks' conds are gone and the clock's writes stay."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fora", backend="eager")
    _run(fast, [(t, inputs, None) for t in timesteps(2)])
    gm = fast.states[0].gm
    graph, kept = cached_step_graph(gm)
    n_inputs = len(list(gm.graph.find_nodes(op="placeholder")))
    assert 0 < len(kept) < n_inputs / 3
    names = [n.name for n in graph.graph.find_nodes(op="placeholder")]
    assert not any("transformer_blocks_modules_1" in n for n in names)
    assert not list(graph.graph.find_nodes(op="call_function", target=torch.ops.higher_order.cond))
    writes = {n.args[0].target for n in graph.graph.find_nodes(op="call_function", target=torch.ops.aten.copy_.default)}
    assert {"_gc_step", "_gc_last_t", "_gc_log"} <= writes


@pytest.mark.parametrize("policy", ["foca", "abcache{order=2}"])
def test_a_cached_step_writes_back_no_unchanged_cache(policy):
    """FoCa's and AB-Cache's state stays out of the cond (a compute step shifts it along a ring), so the one
    graph copies it back after every step; the cached-step graph writes only the clock."""
    model, inputs = tiny_dit(num_layers=2, batch=2)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, policy, backend="eager")
    _run(fast, [(t, inputs, None) for t in timesteps(3)])
    gm = fast.states[0].gm
    caches = {str(n.target) for n in analysis(gm).require(StateSpec).cache_nodes()}

    def written(graph):
        return {str(n.args[0].target) for n in graph.nodes if n.target is torch.ops.aten.copy_.default}

    assert written(gm.graph) & caches  # the one graph writes the caches back
    assert not written(cached_step_graph(gm)[0].graph) & caches


def test_a_host_that_disagrees_with_the_graph_raises():
    """The cached-step graph asserts that the device decision is "cached": a host decision gone wrong
    fails the call instead of returning a cached output for a computed step."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fora", backend="eager")
    ts = timesteps(6)
    _run(fast, [(t, inputs, None) for t in ts[:3]])  # computed, cached, cached: step 3 computes
    fast.states[0].cached_step.will_cache = lambda t: True
    with pytest.raises(RuntimeError, match="the host found this step cached and the graph's clock did not"):
        _run(fast, [(ts[3], inputs, None)])


def test_weights_changed_during_a_generation_are_the_ones_used():
    """The cached-step graph fetches the parameters it reads from the module on every call: a weight changed
    in place, or a parameter replaced, between two cached steps gives what the one graph gives."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(7)

    def edit_in_place(t):
        if t == ts[2]:
            model.proj_out_2.weight.data.mul_(1.5)
        return inputs(t)

    def replace(t):
        if t == ts[5]:
            model.proj_out_2.weight = torch.nn.Parameter(model.proj_out_2.weight.detach() * 0.5)
        return inputs(t)

    original = model.proj_out_2.weight.detach().clone()
    calls = [(t, edit_in_place, None) for t in ts[:4]] + [(t, replace, None) for t in ts[4:]]
    torch._dynamo.reset()
    one = graphcache.optimize(model, "fora{interval=4}", backend="eager")
    one.cached_step_graph = False
    expected = _run(one, calls)
    model.proj_out_2.weight = torch.nn.Parameter(original.clone())
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fora{interval=4}", backend="eager")
    got = _run(fast, calls)
    assert graphcache.decisions(fast) == ["computed", "cached", "cached", "cached", "computed", "cached", "cached"]
    assert fast.states[0].cached_step.runs == 5
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_a_call_unlike_the_computed_one_runs_the_full_graph():
    """A cached step whose call differs from the computed call dynamo checked (another dtype of an argument,
    under autocast, in training mode) is not run by the cached-step graph; the outputs are the one graph's."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(4)

    def int32_labels(t):
        return {**inputs(t), "class_labels": inputs(t)["class_labels"].to(torch.int32)}

    calls = [(ts[0], inputs, None), (ts[1], int32_labels, None)]
    expected, got, fast = _both(model, "fora{interval=4}", calls)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert all(s.cached_step is None or s.cached_step.runs == 0 for s in fast.states)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fora{interval=4}", backend="eager")
    _run(fast, [(ts[0], inputs, None)])
    runner = fast.states[0].cached_step
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert runner.run((), inputs(ts[1]), float(int(ts[1]))) is graphcache.cached_step.NOT_RUN
    model.train()
    try:
        assert runner.run((), inputs(ts[1]), float(int(ts[1]))) is graphcache.cached_step.NOT_RUN
    finally:
        model.eval()
    assert runner.runs == 0
    _run(fast, [(ts[1], inputs, None)])
    assert runner.runs == 1


def test_with_the_decision_on_the_host_the_host_clock_decides(monkeypatch):
    """Where ``host_decision`` moved the predicate to the host (an accelerator's route; forced here), the
    cached-step graph reads the host clock and writes the call's timestep into its buffer: the same steps."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(7)
    calls = [(t, inputs, None) for t in ts] * 2
    torch._dynamo.reset()
    one = graphcache.optimize(model, "fora", backend="eager")
    one.cached_step_graph = False
    expected = _run(one, calls)
    monkeypatch.setattr(rewrite, "HOST_DECISION", MoveDecisionToHost(force=True, check=True))
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fora", backend="eager")
    got = _run(fast, calls)
    runner = fast.states[0].cached_step
    assert runner.schedule.host_t is not None and runner.runs == 2 * graphcache.decisions(fast).count("cached") > 0
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_a_decision_from_the_features_has_no_cached_step_graph():
    """FBCache decides from the first block's output: there is nothing to know before the call. Said in the
    runner's ``why_not``, not as a note (it is what a dynamic policy is)."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fbcache", backend="eager")
    _run(fast, [(t, inputs, None) for t in timesteps(4)])
    assert fast.states[0].cached_step.why_not == DYNAMIC
    assert not any("cached steps" in n for n in fast.notes)


def test_module_paths_read_dynamo_sources():
    model, _ = tiny_dit(num_layers=1, batch=1)
    weight = module_path("L['self'].__dict__['_modules']['proj_out_2']._parameters['weight']")
    blocks = module_path("L['self'].transformer_blocks[0].norm1")
    assert weight is not None and blocks is not None
    assert PathFetcher([weight, blocks])(model) == [model.proj_out_2.weight, model.transformer_blocks[0].norm1]
    assert module_path("L['timestep']") is None
    assert module_path("L['self'].f(x)") is None


@pytest.mark.parametrize(("policy", "backend"), [("fora", "eager"), ("fora", "inductor"),
                                                  ("teacache{threshold=0.2,coefficients=[1.0,0.0]}", "inductor")])
def test_the_export_route_runs_steps_around_dynamo(policy, backend):
    """``graphcache optimize`` times the torch.export route through :class:`CompiledExport`: a static
    schedule's cached steps run the cached-step graph (inputs: the call's flattened leaves) and every other call
    after a generation's first the graph dynamo compiled (inputs: the module's parameters and buffers too),
    with the outputs and decisions of every call through dynamo, bit for bit."""
    from graphcache.exported import CompiledExport, optimize_exported
    from graphcache.rewrite import compile_lowering

    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(7)

    def run(on):
        torch._dynamo.reset()
        cached = optimize_exported(model, inputs(ts[0]), policy, compile_lowering(backend))
        fast = CompiledExport(cached, backend)
        fast.cached_step_graph = fast.direct_calls = on
        outs = []
        for _ in range(2):
            cached.state.reset()
            outs += [fast(**inputs(t))[0].clone() for t in ts]
        return outs, cached.state.decisions(), fast.steps

    expected, decisions, none = run(False)
    got, same, steps = run(True)
    assert same == decisions and none is None  # both routes off: no CachedStepGraph made
    cached_steps = 2 * decisions.count("cached") if policy == "fora" else 0
    assert 0 < decisions.count("cached") < len(ts) and steps.runs == cached_steps
    assert steps.direct_runs == (2 * len(ts) - 2 - cached_steps if backend != "eager" else 0)  # eager: no dynamo
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_the_cached_step_graph_keeps_no_model_alive():
    """States are kept by their model's weights (graphcache.state); a cached-step graph holding its model
    would keep every optimized model alive for good."""
    import gc
    import weakref

    model, inputs = tiny_dit(num_layers=2, batch=2)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fora", backend="eager")
    _run(fast, [(t, inputs, None) for t in timesteps(3)])
    assert fast.states[0].cached_step.runs == 2
    gone = weakref.ref(model)
    del fast, model
    torch._dynamo.reset()
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize(("policy", "backend"), [
    ("fbcache{threshold=0.2}", "eager"),  # decides per sample from the first block
    ("teacache{threshold=0.2,coefficients=[1.0,0.0]}", "inductor"),
    ("fora{interval=3}", "aot_eager"),  # a static schedule: its computed steps
])
def test_after_a_generations_first_call_the_full_graph_runs_without_dynamo(policy, backend):
    """Every call but a generation's first (which goes through dynamo: after ``reset()``, a timestep that does
    not decrease, each context's first) calls the compiled graph directly after the cached-step checks. Two
    generations, then guidance as two calls in contexts: outputs and decisions equal every call through
    dynamo, bit for bit."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(7)
    calls = [(t, inputs, None) for t in ts] * 2 + [(t, inputs, c) for t in ts for c in ("cond", "uncond")]
    torch._dynamo.reset()
    one = graphcache.optimize(model, policy, backend=backend)
    one.cached_step_graph = one.direct_calls = False
    expected = _run(one, calls)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, policy, backend=backend)
    got = _run(fast, calls)
    assert graphcache.decisions(fast) == graphcache.decisions(one)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    runner = fast.states[0].cached_step
    assert runner.direct_why_not is None and runner.direct_runs + runner.runs == len(calls) - 4
    assert "cached" in graphcache.decisions(fast) and "computed" in graphcache.decisions(fast)[1:]
    assert fast.routes() == {"full_graph": 4, "cached_step_graph": runner.runs, "direct": runner.direct_runs}
    assert one.routes() == {"full_graph": len(calls), "cached_step_graph": 0, "direct": 0}
    assert fast.routes_off() == ({} if policy.startswith("fora") else {"cached_step_graph": DYNAMIC})
    assert one.routes_off() == {"cached_step_graph": OFF, "direct": "turned off (direct_calls = False)"}


def test_direct_calls_fetch_the_weights_and_check_the_call():
    """The full graph called without dynamo takes the weights the module holds at each call (one replaced by
    a new Parameter between two computed steps), and a call unlike the recorded one (another dtype of an
    argument, training mode, grad mode) goes through dynamo instead."""
    model, inputs = tiny_dit(num_layers=3, batch=2)
    ts = timesteps(5)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, "fbcache{threshold=0.0}", backend="eager")  # computes every step
    runner = None
    with torch.no_grad():
        for k, t in enumerate(ts[:3]):
            if k == 2:
                model.proj_out_2.weight = torch.nn.Parameter(model.proj_out_2.weight * 0.5)
            assert torch.equal(fast(**inputs(t))[0], model(**inputs(t))[0])
            runner = fast.states[0].cached_step
        assert runner.direct_runs == 2
        int32 = {**inputs(ts[3]), "class_labels": inputs(ts[3])["class_labels"].to(torch.int32)}
        assert runner.run_direct((), int32, float(int(ts[3]))) is graphcache.cached_step.NOT_RUN
        model.train()
        try:
            assert runner.run_direct((), inputs(ts[3]), float(int(ts[3]))) is graphcache.cached_step.NOT_RUN
        finally:
            model.eval()
    assert runner.run_direct((), inputs(ts[3]), float(int(ts[3]))) is graphcache.cached_step.NOT_RUN  # grad mode
    assert runner.direct_runs == 2


def test_path_fetcher_and_tensor_check(monkeypatch):
    """Paths sharing a prefix are walked once per call and give what each path names; the tensor check refuses
    another dtype, shape, stride or requires_grad, by dynamo's C++ check or (without it) in Python."""
    from graphcache.call_checks import TensorCheck

    model, _ = tiny_dit(num_layers=2, batch=1)
    sources = ["L['self'].__dict__['_modules']['transformer_blocks']._modules['0']._parameters['weight']",
               "L['self'].transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.weight",
               "L['self'].transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias"]
    sources[0] = "L['self'].transformer_blocks[0].ff.net[2].weight"
    fetch = PathFetcher([module_path(s) for s in sources])
    linear = model.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1
    assert fetch(model) == [model.transformer_blocks[0].ff.net[2].weight, linear.weight, linear.bias]
    assert len(fetch.ops) < sum(len(module_path(s)) for s in sources)  # the shared prefix once
    x = torch.randn(4, 3)
    for native in (True, False):
        if not native:
            monkeypatch.setattr(torch._C._dynamo.guards, "TensorGuards", None)
        check = TensorCheck([x, x[:, :2]])
        assert (check._native is not None) == native
        assert check([x.clone(), torch.randn(4, 3)[:, :2]])
        for other in (x.double(), torch.randn(3, 4), torch.randn(3, 4).t(), x.clone().requires_grad_()):
            assert not check([other, x[:, :2]])
        assert not check([x]) and not check([x, 1.0])
