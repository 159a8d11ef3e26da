"""The independent quality judge: a small CNN digit classifier trained on the real digits only.

Its 64-d penultimate features give the Frechet distance between generated and real digits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GraphcacheError

JUDGE_WEIGHTS = Path(__file__).parent / "weights" / "judge.safetensors"


class DigitJudge(nn.Module):
    """Input: (N, 16, 16) or (N, 1, 16, 16) images in [0, 1]. Output: class logits (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 64)
        self.head = nn.Linear(64, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images if images.dim() == 4 else images[:, None]
        x = F.max_pool2d(F.relu(self.conv1(x * 2 - 1)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # type: ignore[no-any-return]


def load_judge(path: Path = JUDGE_WEIGHTS) -> DigitJudge:
    from .pipeline import read_safetensors

    if not Path(path).exists():
        raise GraphcacheError(f"judge weights not found at {path}; run `python examples/train_judge.py`")
    judge = DigitJudge()
    judge.load_state_dict(read_safetensors(path))
    return judge.eval().requires_grad_(False)
