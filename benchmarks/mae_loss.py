"""Which MAE loss paints dropped patches: plain pixels against per-patch normalised pixels (norm_pix_loss).

    .venv/bin/python benchmarks/mae_loss.py --steps 539            # both losses, one after the other
    .venv/bin/python benchmarks/mae_loss.py --steps 539 --loss pixel --save runs/mae_full/mae_pix.pth

Trains the same tiny MAE (`mae_vit_tiny`, 32 px in 4 px patches) on CIFAR-10's training images from
`../shared/data` with `adq train-mae`'s own step (`train_step`: random_resized_crop, random_keep 75%,
reconstruction_loss, AdamW 0.9/0.95 wd 0.05, warm-up + cosine), in one process without Ray, for the same
number of steps and the same seed per loss. Then the PSNR on the dropped patches of 500 held-out training
images (`heldout_psnr`) against mean fill, at 75% and at 20% random masking (the pipeline's mask_ratio).
Prints one row per loss and mask ratio: MAE dB, mean-fill dB, and the gain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import TAR, decode_split  # noqa: E402

from adq_ray.evaluate.mae_train import _param_groups, heldout_psnr, train_step  # noqa: E402
from adq_ray.models.mae import ARCHS, warmup_cosine  # noqa: E402


def train(images: torch.Tensor, norm_pix_loss: bool, steps: int, lr: float, batch: int, seed: int) -> torch.nn.Module:
    """A tiny MAE trained for `steps` steps on uint8 images (N, 3, 32, 32); returns it in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = ARCHS["mae_vit_tiny"](img_size=32, patch_size=4, norm_pix_loss=norm_pix_loss)
    optimizer = torch.optim.AdamW(_param_groups(net, 0.05), lr=lr, betas=(0.9, 0.95))
    warmup, start = 0.05 * steps, time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * warmup_cosine(step, steps, warmup)
        batch_ids = torch.randint(len(images), (batch,), generator=generator)
        loss = train_step(net, net, optimizer, images[batch_ids], 0.75, 0.2, generator)
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tar", type=Path, default=TAR)
    p.add_argument("--steps", type=int, default=539)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=["pixel", "norm_pix", "both"], default="both")
    p.add_argument("--heldout", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default="", help="save the (last) model as an `adq train-mae` checkpoint")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    decoded = decode_split(args.tar, "train")
    x = torch.from_numpy(np.stack([decoded[n] for n in sorted(decoded)])).permute(0, 3, 1, 2).contiguous()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    held, images = x[perm[: args.heldout]], x[perm[args.heldout :]]
    rows = []
    for loss in ("pixel", "norm_pix") if args.loss == "both" else (args.loss,):
        print(f"{loss}: {args.steps} steps of {args.batch} on {len(images):,} images", flush=True)
        net = train(images, loss == "norm_pix", args.steps, args.lr, args.batch, args.seed)
        for ratio in (0.75, 0.2):
            psnr = heldout_psnr(net, held, ratio, seed=args.seed)
            rows.append((loss, ratio, psnr["mae"], psnr["mean_fill"]))
        if args.save:
            args_ = {"arch": "mae_vit_tiny", "img_size": 32, "patch_size": 4, "norm_pix_loss": loss == "norm_pix"}
            torch.save({"model": net.state_dict(), "args": args_}, args.save)
    print("\n| loss | mask ratio | MAE dB | mean fill dB | gain dB |\n|---|---|---|---|---|")
    for loss, ratio, mae, mean in rows:
        print(f"| {loss} | {ratio:g} | {mae:.2f} | {mean:.2f} | {mae - mean:+.2f} |")


if __name__ == "__main__":
    main()
