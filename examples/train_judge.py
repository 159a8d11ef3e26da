"""Train the digit judge shipped in graphcache/reference/weights/judge.safetensors.

A small CNN on scikit-learn's digits (16x16, same preprocessing as the reference denoiser's data), trained
on a fixed 80% split with +-1 pixel shifts; prints its accuracy on the held-out 20%.

    python examples/train_judge.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from graphcache.reference.data import load_digits_tensors, split_indices
from graphcache.reference.judge import JUDGE_WEIGHTS, DigitJudge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=JUDGE_WEIGHTS)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    images, labels = load_digits_tensors()
    images = (images + 1) / 2  # the judge sees [0, 1] images, as the pipeline outputs
    train, held_out = (torch.from_numpy(i) for i in split_indices(len(images)))
    judge = DigitJudge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in tqdm(range(args.epochs), desc="judge", unit="epoch"):
        judge.train()
        for batch in train[torch.randperm(len(train))].split(64):
            x = torch.roll(images[batch], shifts=int(torch.randint(-1, 2, (1,))), dims=-1)
            loss = F.cross_entropy(judge(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    judge.eval()
    with torch.no_grad():
        accuracy = (judge(images[held_out]).argmax(1) == labels[held_out]).float().mean().item()
    print(f"judge held-out accuracy: {100 * accuracy:.2f}% on {len(held_out)} real digits")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(args.output),
              metadata={"format": "graphcache-digit-judge", "version": "1", "held_out_accuracy": f"{accuracy:.4f}"})
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
