"""graphcache side by side with diffusers' own cache hooks: same model, same method, settings mapped field by field.

For each (model, method): a real DDIM generation of ``steps`` steps (batch 1, the latent updated by the
scheduler) is run by
  1. the uncached model compiled (``torch.compile(fullgraph=True)``): the baseline,
  2. diffusers' hooks, eager (``apply_first_block_cache``, ``apply_taylorseer_cache``, ``apply_mag_cache``,
     ``apply_pyramid_attention_broadcast``, ``apply_faster_cache`` on a copy of the model),
  3. the same hooks under ``torch.compile`` (not fullgraph: the hooks break the graph),
  4. ``graphcache.optimize(model, policy)`` (one graph).
Each is warmed up (compiled) by one generation, then timed ``repeats`` times. The diffusers runs and the
graphcache runs are two phases after a dynamo reset, each with a freshly compiled baseline of its own: in the
diffusers phase the baseline is timed before the hooks are compiled (their graph break inside the blocks'
loop makes dynamo skip the model's forward for every later compile of that class until a reset); in the
graphcache phase graphcache and the baseline run in turn.

Computed steps are read per call: diffusers' from forward hooks on modules only a computed step runs (eager),
graphcache's from its decision log. The mappings, and where a mapping is only approximate, are in
:func:`mapping` and in each :class:`Mapping`'s ``note``. Nothing here prints: progress goes through the
``status`` callback, the results come back as records (:class:`Row`, :class:`Agreement`, :class:`Comparison`);
``graphcache bench --against diffusers`` and ``benchmarks/vs_diffusers.py`` print them.
"""

from graphcache.vs_diffusers.generation import Run, generate
from graphcache.vs_diffusers.mappings import METHODS, Mapping, Settings, magcache_calibration, mapping
from graphcache.vs_diffusers.report import TABLE_HEADER, Agreement, Comparison, Row, step_medians
from graphcache.vs_diffusers.side_by_side import baseline, compare, decisions, hooked_model, side_by_side
from graphcache.vs_diffusers.subjects import (
           MODELS,
           Clock,
           Status,
           Subject,
           dit,
           flux,
           pixart,
           subject,
           subject_from_inputs,
)

__all__ = ["METHODS", "MODELS", "TABLE_HEADER", "Agreement", "Clock", "Comparison", "Mapping", "Row", "Run",
           "Settings", "Status", "Subject", "baseline", "compare", "decisions", "dit", "flux", "generate",
           "hooked_model", "magcache_calibration", "mapping", "pixart", "side_by_side", "step_medians", "subject",
           "subject_from_inputs"]
