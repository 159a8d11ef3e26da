"""Shared test helpers: run a generation, compare outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from graphcache.runner import run_generation


def generation(fn: Callable[..., Any], inputs: Callable[[float], dict[str, Any]], timesteps: list[float]
               ) -> list[torch.Tensor]:
    return run_generation(fn, inputs, timesteps).outputs


def timesteps(steps: int) -> list[float]:
    return torch.linspace(999, 0, steps).tolist()


def first_block_residuals(model, inputs, ts):
    """r1 = block_0(x) - x at every step, from the model's own modules (no graphcache involved)."""
    out = []
    with torch.no_grad():
        for t in ts:
            kw = inputs(t)
            h = model.pos_embed(kw["hidden_states"])
            block = model.transformer_blocks[0]
            out.append(block(h, timestep=kw["timestep"], class_labels=kw["class_labels"]) - h)
    return out


def assert_exact_iff_computed(outputs, reference, per_sample_decisions, exact_only=False):
    """Each sample's output equals the uncached one exactly on the steps it computed (and, unless
    ``exact_only``, differs on the steps it cached)."""
    for b, sample in enumerate(per_sample_decisions):
        for out, ref, d in zip(outputs, reference, sample, strict=True):
            same = torch.equal(out[b], ref[b])
            assert same if d == "computed" else (exact_only or not same), (b, d)


def assert_exact_on_computed_steps(model, inputs, ts, policy, reference_model=None, backend="eager"):
    """Optimize ``model`` with ``policy``, run a generation over ``ts``: outputs equal ``reference_model``'s (the
    model itself by default) exactly on computed steps and differ on cached ones; something is cached.
    Returns the decisions."""
    import graphcache

    reference = generation(model if reference_model is None else reference_model, inputs, ts)
    torch._dynamo.reset()
    fast = graphcache.optimize(model, policy=policy, backend=backend)
    outputs = generation(fast, inputs, ts)
    decisions = graphcache.decisions(fast)
    assert "cached" in decisions, decisions
    assert [torch.equal(o, r) for o, r in zip(outputs, reference, strict=True)] == [
        d == "computed" for d in decisions], decisions
    return decisions


def moving_latent(inputs):
    """``inputs`` with a latent that moves along the generation, as in a sampler (EasyCache reads its change)."""
    def moved(t):
        kw = inputs(t)
        return kw | {"hidden_states": kw["hidden_states"] * (0.5 + t / 1000) + (1 - t / 1000) * 0.3}

    return moved


def run_with_stream_hooks(model, kwargs, split, replace):
    """Run ``model`` recording the stream entering the stack (``in``), entering block ``split`` (``mid``)
    and leaving it (``out``); ``replace`` maps 'mid' / 'out' to a function of the recorded values giving
    the value to use instead."""
    blocks, seen, handles = model.transformer_blocks, {}, []

    def pre(_m, args, kw):
        seen.setdefault("in", args[0] if args else kw["hidden_states"])

    def after(name):
        def hook(_m, _args, output):
            seen[name] = output
            if name in replace:
                seen[name] = replace[name](seen)
            return seen[name]
        return hook

    handles.append(blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
    handles.append(blocks[split - 1].register_forward_hook(after("mid")))
    handles.append(blocks[-1].register_forward_hook(after("out")))
    try:
        with torch.no_grad():
            sample = model(**kwargs).sample
    finally:
        for h in handles:
            h.remove()
    return sample, seen


def digits_pipeline():
    """The reference digits pipeline with a fresh random-weight denoiser (seed 0), progress bar off."""
    from diffusers import DDIMScheduler

    from graphcache.reference.model import SCHEDULER_CONFIG, build_denoiser
    from graphcache.reference.pipeline import DigitsPipeline

    torch.manual_seed(0)
    pipe = DigitsPipeline(transformer=build_denoiser().eval(), scheduler=DDIMScheduler(**SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_digits(pipe, steps=8):
    return pipe(class_labels=[1, 7], num_inference_steps=steps, guidance_scale=1.5,
                generator=torch.Generator().manual_seed(0))
