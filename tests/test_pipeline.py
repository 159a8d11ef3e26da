"""graphcache.optimize on a diffusers pipeline: the denoiser is replaced, the pipeline runs unchanged."""

from __future__ import annotations

import graphcache

from helpers import digits_pipeline, generate_digits

_pipe, _generate = digits_pipeline, generate_digits


def test_never_caching_policy_is_bit_exact_through_the_pipeline():
    reference = _generate(_pipe())
    pipe = graphcache.optimize(_pipe(), "fora", backend="eager", interval=1)
    assert isinstance(pipe.transformer, graphcache.CachedModule)
    assert pipe.transformer.config.num_layers == 6  # attribute access falls through to the model
    assert (_generate(pipe) == reference).all()


def test_fora_pipeline_schedule_and_bounded_change():
    reference = _generate(_pipe(), steps=9)
    pipe = graphcache.optimize(_pipe(), "fora", backend="eager", interval=3)
    images = _generate(pipe, steps=9)
    assert graphcache.decisions(pipe) == ["computed", "cached", "cached"] * 3
    assert images.shape == reference.shape == (2, 16, 16)
    assert 0 < abs(images - reference).max() < 0.5  # reuse changes the sample, but not beyond recognition
    again = _generate(pipe, steps=9)  # second generation: same result (no leaked state)
    assert (again == images).all()
