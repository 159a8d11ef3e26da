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


@pytest.mark.parametrize(("spec", "message"), [
    ("fora{interval}", r"expected '=' at position 13 \(fora\{interval>>>\}\)"),
    ("fora{interval=4", r"expected '\}'"),
    ("fora{interval=4}x", r"unexpected text after the spec"),
    ("cfgcache{features=fastercache{spatial=2}", r"expected '\}' at position 40"),
    ("fora{granularity='block}", r"unterminated quote"),
])
def test_bad_spec_syntax_is_pointed_at(spec, message):
    with pytest.raises(PolicyConfigError, match=message):
        make_policy(spec)


@pytest.mark.parametrize("spec", [
    "cfgcache{features=fastercache{spatial=2,temporal=4}}",
    "teacache{coefficients=[498.0,-283.0,55.8,-3.82,0.264],threshold=0.3}",
    "adacache{codebook=[0.08:6,0.16:5]}",
    "fbcache{forecast=taylor:2,threshold=0.2}",
    "fora{granularity='block', interval = 4}",
])
def test_nested_specs_lists_and_quotes_parse_and_print_back(spec):
    config = make_policy(spec)
    assert make_policy(config.spec()) == config
    assert config.spec() == make_policy(config.spec()).spec()


def test_the_canonical_spec_names_only_what_differs():
    assert make_policy("fora").spec() == "fora"
    assert make_policy("fora{interval=4}", warmup=2).spec() == "fora{interval=4,warmup=2}"
    assert make_policy("cfgcache{features=fastercache{spatial=2}}").features == "fastercache{spatial=2}"


def test_field_docs_cover_every_field():
    names = [row[0] for row in FORA.field_docs()]
    assert names == ["interval", "warmup", "granularity", "num_steps", "compute_last", "forecast", "forecast_from"]
    assert all(row[3] for row in FORA.field_docs())


def test_constraints_are_declared_next_to_the_fields():
    """Ranges live in the field declarations (``option(..., minimum=1)``), are checked for every policy, and
    are listed by ``graphcache policies``; the refusal reads as before."""
    from graphcache.policies.taylorseer import TaylorSeer

    assert FORA.field_constraints()["interval"] == ">= 1" and TaylorSeer.field_constraints()["interval"] == ">= 1"
    with pytest.raises(PolicyConfigError, match=r"taylorseer.interval=0 is invalid: must be an integer >= 1"):
        TaylorSeer(interval=0)
    with pytest.raises(PolicyConfigError, match=r"fora.interval=0 is invalid: must be an integer >= 1 \(1 computes"):
        FORA(interval=0)
