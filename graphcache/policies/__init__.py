"""The policy registry: names map to ``module:Class`` and are imported on first use."""

from __future__ import annotations

import importlib
from typing import Any

from graphcache.errors import PolicyConfigError
from graphcache.policies.base import PolicyConfig
from graphcache.policies.spec import format_spec, parse_spec

REGISTRY: dict[str, str] = {
    "abcache": "graphcache.policies.abcache:ABCache",
    "adacache": "graphcache.policies.adacache:AdaCache",
    "auto": "graphcache.policies.auto:Auto",
    "cfgcache": "graphcache.policies.cfgcache:CFGCacheConfig",
    "dbcache": "graphcache.policies.dbcache:DBCache",
    "deepcache": "graphcache.policies.deepcache:DeepCache",
    "deltadit": "graphcache.policies.deltadit:DeltaDiT",
    "easycache": "graphcache.policies.easycache:EasyCache",
    "fastercache": "graphcache.policies.fastercache:FasterCache",
    "fbcache": "graphcache.policies.fbcache:FBCache",
    "foca": "graphcache.policies.foca:FoCa",
    "fora": "graphcache.policies.fora:FORA",
    "hicache": "graphcache.policies.hicache:HiCache",
    "magcache": "graphcache.policies.magcache:MagCache",
    "pab": "graphcache.policies.pab:PAB",
    "speca": "graphcache.policies.speca:SpeCa",
    "taylorseer": "graphcache.policies.taylorseer:TaylorSeer",
    "teacache": "graphcache.policies.teacache:TeaCache",
}


def policy_class(name: str) -> type[PolicyConfig]:
    key = name.strip().lower()
    if key not in REGISTRY:
        raise PolicyConfigError(f"unknown policy '{name}'; available: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[key].split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def make_policy(policy: str | PolicyConfig, /, **options: Any) -> PolicyConfig:
    """A policy config from a name or spec string plus options (or a config passed through)."""
    if isinstance(policy, PolicyConfig):
        if options:
            import dataclasses

            return dataclasses.replace(policy, **options)
        return policy
    if not isinstance(policy, str):
        raise PolicyConfigError(f"policy must be a name, a spec string such as 'fora{{interval=3}}' or a policy "
                                f"config; got {type(policy).__name__} ({policy!r}); available: "
                                f"{', '.join(available())}")
    name, spec_options = parse_spec(policy)
    twice = sorted(set(spec_options) & set(options))
    if twice:
        raise PolicyConfigError(f"option {twice} is given both in the spec '{policy}' and as a keyword; give it once")
    return policy_class(name).from_options({**spec_options, **options})


def available() -> list[str]:
    return sorted(REGISTRY)


def markdown_table() -> str:
    """The policy table of the README, generated from the configs (``graphcache policies --markdown``)."""
    lines = ["| policy | what it does | options (defaults) |", "|---|---|---|"]
    for name in available():
        cls = policy_class(name)
        options = ", ".join(f"`{field}={default!r}`" for field, _, default, _ in cls.field_docs())
        lines.append(f"| [`{name}`]({cls.paper}) | {cls.summary} | {options} |")
    return "\n".join(lines)


__all__ = ["REGISTRY", "PolicyConfig", "available", "format_spec", "make_policy", "markdown_table", "parse_spec",
           "policy_class"]
