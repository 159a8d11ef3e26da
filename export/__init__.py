"""Deployment lowerings of a cached denoiser: ONNX (+ ONNX Runtime runner), AOTInductor, TensorRT.

``export_model(model, example_kwargs, out_dir, policy, fmt)`` writes graph files and a plan;
``load(out_dir)`` returns a runner called like the denoiser for whole generations; ``compile_unrolled``
runs the step-unrolled schedule in this process under ``torch.compile`` (CUDA graphs per step); ``check_export``
compares an export with torch. Heavy dependencies (onnx, onnxruntime, polygraphy, tensorrt) are imported
only when a lowering needs them, and a missing one names the extra to install.
"""

from .build import Exported, export_model, export_uncached
from .compiled import compile_unrolled
from .plan import Plan, load_plan
from .runtime import PlanRunner, load

__all__ = ["Exported", "Plan", "PlanRunner", "compile_unrolled", "export_model", "export_uncached", "load", "load_plan"]
