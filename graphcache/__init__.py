"""graphcache: feature caching for diffusion denoisers as compiler passes.

``graphcache.optimize(model_or_pipeline)`` rewrites the denoiser's graph (default policy ``auto``: FORA on the
stack of repeated blocks, DeepCache on a U-Net): the stack of repeated blocks is found by structure, a
``torch.cond`` inside the graph decides per step whether to run the blocks or use the cache, and the result
compiles to one graph (0 breaks, 0 recompiles).
"""

from graphcache.api import cache_bytes, decisions, optimize, reset
from graphcache.cached_module import CachedModule
from graphcache.errors import (
    ExportError,
    GraphcacheError,
    ModelFileError,
    PassError,
    PolicyConfigError,
    UnsupportedGraphError,
)
from graphcache.policies import available as policies
from graphcache.policies import make_policy
from graphcache.rewrite import INDUCTOR_OPTIONS

__version__ = "0.1.0"

__all__ = [
    "INDUCTOR_OPTIONS",
    "CachedModule",
    "ExportError",
    "GraphcacheError",
    "ModelFileError",
    "PassError",
    "PolicyConfigError",
    "UnsupportedGraphError",
    "cache_bytes",
    "decisions",
    "make_policy",
    "optimize",
    "policies",
    "reset",
]
