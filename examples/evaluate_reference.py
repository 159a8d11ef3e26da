"""Class accuracy of the uncached reference pipeline, judged by the shipped digit classifier.

    python examples/evaluate_reference.py --samples 200 --steps 50 --guidance 1.5 1.0 2.0
"""

from __future__ import annotations

import argparse
import time

import torch

from graphcache.reference import load_pipeline
from graphcache.reference.judge import load_judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.5])
    args = parser.parse_args()
    pipe = load_pipeline()
    pipe.set_progress_bar_config(leave=False)
    judge = load_judge()
    labels = [i % 10 for i in range(args.samples)]
    for guidance in args.guidance:
        start = time.time()
        images = pipe(class_labels=labels, num_inference_steps=args.steps, guidance_scale=guidance,
                      generator=torch.Generator().manual_seed(args.seed), output_type="pt", progress=True)
        with torch.no_grad():
            accuracy = (judge(images).argmax(1) == torch.tensor(labels)).float().mean().item()
        print(f"guidance {guidance}: class accuracy {100 * accuracy:.1f}% ({args.samples} samples, {args.steps} "
              f"steps, {time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
