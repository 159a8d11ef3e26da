"""Policy configs: registry, spec strings, option conversion, and errors that say what to change."""

from __future__ import annotations

import pytest

import graphcache
from graphcache.errors import PolicyConfigError
from graphcache.policies import available, make_policy, parse_spec
from graphcache.policies.fora import FORA

from models import tiny_dit


def test_registry_lists_fora():
    assert "fora" in available()
    assert "fora" in graphcache.policies()


def test_spec_string_and_options():
    policy = make_policy("fora{interval=4,warmup=2}", granularity="block")
    assert policy == FORA(interval=4, warmup=2, granularity="block")
    assert parse_spec("fora") == ("fora", {})


def test_string_options_are_converted_to_field_types():
    policy = FORA.from_options({"interval": "5", "compute_last": "true", "num_steps": "30"})
    assert (policy.interval, policy.compute_last, policy.num_steps) == (5, True, 30)


def test_unknown_policy():
    with pytest.raises(PolicyConfigError, match=r"unknown policy 'foraa'; available: .*fora"):
        make_policy("foraa")


@pytest.mark.parametrize("options,message", [
    ({"interval": 0}, r"fora.interval=0 is invalid: must be an integer >= 1"),
    ({"interval": "x"}, r"option fora.interval expects int, got 'x'"),
    ({"granularity": "layer"}, r"fora.granularity='layer' is invalid: must be 'stack' or 'block'"),
    ({"compute_last": True}, r"compute_last=True is invalid: needs num_steps"),
    ({"intervall": 3}, r"policy 'fora' has no option \['intervall'\]; its options are"),
])
def test_bad_options(options, message):
    with pytest.raises(PolicyConfigError, match=message):
        make_policy("fora", **options)


def test_optimize_rejects_bad_option_before_compiling():
    model, _ = tiny_dit()
    with pytest.raises(PolicyConfigError, match="interval=-1 is invalid"):
        graphcache.optimize(model, "fora", interval=-1)


def test_bad_spec_syntax():
    with pytest.raises(PolicyConfigError, match="must be key=value"):
        make_policy("fora{interval}")


def test_field_docs_cover_every_field():
    names = [row[0] for row in FORA.field_docs()]
    assert names == ["interval", "warmup", "granularity", "num_steps", "compute_last", "forecast", "forecast_from"]
    assert all(row[3] for row in FORA.field_docs())
