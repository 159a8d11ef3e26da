"""Train the reference digits denoiser shipped in graphcache/reference/weights/.

Reproduces ``dit_digits.safetensors``: a class-conditional diffusers DiT (epsilon prediction, DDPM
squaredcos schedule) on scikit-learn's digits, upsampled to 16x16, with 10% label dropout for
classifier-free guidance and an EMA of the weights. Seeded; about 45 minutes on 2 CPU cores.

    python examples/train_reference.py --steps 3000 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from graphcache.reference.data import load_digits_tensors
from graphcache.reference.model import NULL_CLASS, SCHEDULER_CONFIG, build_denoiser
from graphcache.reference.pipeline import DEFAULT_WEIGHTS, load_denoiser, save_denoiser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=None, help="stop early after this wall time")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--init", type=Path, default=None, help="continue from these weights (model and EMA)")
    args = parser.parse_args()

    from diffusers import DDPMScheduler

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load_digits_tensors()
    model = build_denoiser().train()
    if args.init is not None:
        model.load_state_dict(load_denoiser(args.init).state_dict())
        model.train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    alphas = scheduler.alphas_cumprod
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 200
    lr_at = lambda s: min(1.0, (s + 1) / warmup)  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"reference DiT: {n_params / 1e6:.2f} M parameters, {len(images)} training digits")

    start = time.time()
    bar = tqdm(range(args.steps), desc="train", unit="step")
    for step in bar:
        idx = torch.randint(0, len(images), (args.batch,))
        x0 = images[idx]
        shift = torch.randint(-1, 2, (1,)).item()
        x0 = torch.roll(x0, shifts=int(shift), dims=-1)
        y = labels[idx].clone()
        y[torch.rand(args.batch) < 0.1] = NULL_CLASS
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,))
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = model(xt, timestep=t, class_labels=y).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if args.minutes is not None and time.time() - start > args.minutes * 60:
            print(f"stopping after {step + 1} steps ({args.minutes} min)")
            break
    save_denoiser(ema, args.output)
    size = args.output.stat().st_size
    print(f"saved {args.output} ({size / 2**20:.1f} MiB, fp16), {time.time() - start:.0f} s, loss {loss.item():.4f}")
    assert math.isfinite(loss.item())


if __name__ == "__main__":
    main()
