"""AOTInductor packages: each graph of the plan compiled ahead of time into a ``.pt2`` package.

The package holds the functional graph (state in, state out, ``torch.cond`` inside for the in-graph form),
so the cache state is passed explicitly and kept as tensors on the device between steps. Loading needs
torch only; no Python graph code runs per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from graphcache.errors import ExportError

from .functional import FunctionalGraph
from .plan import Plan


def write_package(fg: FunctionalGraph, example_kwargs: Mapping[str, Any], path: Path) -> Path:
    """``torch.export`` the functional graph and compile it with ``aoti_compile_and_package``."""
    inputs = fg.flat_inputs(example_kwargs)
    args = (*inputs, *fg.initial_state(inputs[0].device))
    try:
        with torch.no_grad():
            program = torch.export.export(fg.module, args, strict=False)
            out = torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as err:
        raise ExportError(f"AOTInductor compile of {path.name} failed: {type(err).__name__}: {err}") from err
    return Path(out)


class AotiBackend:
    def __init__(self, plan: Plan, directory: Path, device: str = "cpu") -> None:
        self.plan = plan
        self.device = torch.device(device)
        self.models = {name: torch._inductor.aoti_load_package(str(directory / e.file)) for name, e in
                       plan.graphs.items()}
        self.specs = {s.name: s for s in plan.state}

    def allocate(self, name: str) -> torch.Tensor:
        return self.specs[name].initial(self.device)

    def run(self, graph: str, inputs: Sequence[torch.Tensor], state: dict[str, Any]) -> tuple[
            list[torch.Tensor], dict[str, Any]]:
        args = [t.to(self.device) for t in inputs] + [state[s.name] for s in self.plan.state]
        with torch.no_grad():
            results = self.models[graph](*args)
        n = len(self.plan.outputs)
        writes = self.plan.graphs[graph].writes
        return list(results[:n]), dict(zip(writes, results[n:], strict=True))

    def read(self, handle: Any) -> torch.Tensor:
        return handle.detach().cpu()  # type: ignore[no-any-return]
