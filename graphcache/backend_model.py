"""The model behind ``torch.compile(model, backend="graphcache")``: dynamo hands the backend a graph, not the
module, so a calibrated policy (TeaCache, MagCache) could not check that its file was made for this model.
The module is read from the frame dynamo is compiling, the first graph of each ``torch.compile`` call:

- ``torch.compile(module)``: torch's wrapper frame ``inner(*args, **kwargs)`` calling ``fn``, the module;
- ``torch.compile(module.forward)`` or a model whose forward dynamo traces itself: ``self`` of the frame whose
  code is the module class's ``forward``.

Later graphs of the same call (after a graph break: a resumed frame, or a submodule's own frame) are not the
model and are not checked again. Where no module can be read (a function around the model, another torch),
a warning says the calibration's fingerprint was not checked. Mismatches raise what ``graphcache.optimize``
raises (:class:`graphcache.errors.PolicyConfigError`, naming ``graphcache calibrate``).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch

# torch.compile calls whose model was checked, by id (torch's wrapper defines __eq__, so it is not hashable)
_CHECKED: dict[int, weakref.ref[Any]] = {}


def compiled_module() -> torch.nn.Module | None:
    """The module whose frame dynamo is compiling now (module docstring), None where it is not one."""
    try:
        from torch._dynamo import external_utils
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        root = tx.output.root_tx if tx is not None else None
        if root is None:
            return None
        code, local = root.f_code, root.f_locals
    except Exception:  # another torch: no such internals
        return None
    fn, self = local.get("fn"), local.get("self")
    if code.co_name == "inner" and code.co_filename == external_utils.__file__:  # wrap_inline's frame
        return fn if isinstance(fn, torch.nn.Module) else None
    if isinstance(self, torch.nn.Module) and code is getattr(type(self).forward, "__code__", None):
        return self
    return None


def check_calibration(config: Any, owner: object) -> None:
    """``config.check_model`` on the compiled module, once per ``torch.compile`` call (``owner``), for a policy
    that reads a calibration file; a warning where the module cannot be read."""
    path = getattr(config, "calibration", None)
    done = _CHECKED.get(id(owner))
    if path is None or (done is not None and done() is owner):
        return
    module = compiled_module()
    if module is None:
        warnings.warn(f"graphcache: the model torch.compile wraps could not be found, so the calibration {path} "
                      "was not checked against it (graphcache.optimize checks it)", stacklevel=3)
        return
    config.check_model(module)
    if owner is not None:
        key = id(owner)
        _CHECKED[key] = weakref.ref(owner, lambda _: _CHECKED.pop(key, None))
