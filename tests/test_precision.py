"""The GPU path's numerics, checked on CPU where torch allows it (CPU autocast supports bf16).

The Embedder runs its models under bf16 autocast on CUDA (`precision="auto"`). These tests pin what
that costs: on real CIFAR-10 images and the trained CIFAR ResNet-20 (random weights could make
the features trivially similar, or amplify rounding arbitrarily), bf16 embeddings and view vectors
stay within cosine 0.999 of fp32 per image, and the texture level, computed outside autocast, is
bit-identical. With CUDA visible, the same checks compare bf16 on the GPU with fp32 on the CPU.
"""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from util import CIFAR_TAR, SHARED

from adq_ray.config import Config
from adq_ray.embed.actor import Embedder, autocast_dtype
from adq_ray.ingest.decode import decode_image

RESNET20 = SHARED / "weights" / "resnet20-12fca82f.th"
PER_CLASS, CLASSES = 4, 8  # 32 images: the first few of each class met in the (shuffled) tarball
COSINE = 0.999

pytestmark = pytest.mark.skipif(
    not (CIFAR_TAR.exists() and RESNET20.exists()), reason="shared CIFAR-10 tarball or ResNet-20 weights not present"
)


@pytest.fixture(scope="module")
def cifar() -> tuple[torch.Tensor, np.ndarray]:
    """uint8 (32, 3, 32, 32) real CIFAR-10 training images (decoded as the pipeline does) and sample ids."""
    images: list[np.ndarray] = []
    seen: dict[str, int] = {}
    with tarfile.open(CIFAR_TAR, mode="r|*") as tar:
        for member in tar:
            parts = member.name.removeprefix("./").split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != "train":
                continue
            if seen.get(parts[1], 0) >= PER_CLASS or (parts[1] not in seen and len(seen) == CLASSES):
                continue
            seen[parts[1]] = seen.get(parts[1], 0) + 1
            decoded = decode_image(tar.extractfile(member).read(), size=32, max_pixels=10**6, max_bytes=10**6)
            assert decoded.ok, decoded.reason
            images.append(decoded.image)
            if len(images) == PER_CLASS * CLASSES:
                break
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return batch, np.arange(len(images), dtype=np.int64) * 7 + 3


def embedder(precision: str, device: str = "cpu", features: str = "embedding") -> Embedder:
    config = Config(
        input="unused",
        output="unused",
        image_size=32,
        backbone="cifar_resnet20",
        backbone_weights=str(RESNET20),
        features=features,
        device=device,
        precision=precision,
    )
    return Embedder(config, num_classes=10)


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double().cpu(), b.double().cpu(), dim=1)


def test_autocast_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    config = Config(input="x", output="y")
    assert autocast_dtype(config, cpu) is None  # auto on CPU: plain fp32
    assert autocast_dtype(config, cuda) is torch.bfloat16  # auto on CUDA: bf16
    assert autocast_dtype(config.replace(precision="bf16"), cpu) is torch.bfloat16
    assert autocast_dtype(config.replace(precision="fp32"), cuda) is None


def test_bf16_autocast_on_cpu_matches_fp32(cifar):
    images, ids = cifar
    torch.manual_seed(0)
    fp32 = embedder("fp32").embed(images, ids)
    bf16 = embedder("bf16").embed(images, ids)
    assert set(fp32) == set(bf16) == {"texture", "embedding", "view_sum"}
    # The check is meaningful: the trained model separates these images (not all one direction) ...
    unit = F.normalize(fp32["embedding"], dim=1)
    off_diagonal = (unit @ unit.T)[~torch.eye(len(ids), dtype=torch.bool)]
    assert off_diagonal.mean() < 0.9, "features too alike for the cosine check to mean anything"
    # ... and bf16 did round: the outputs are not bit-equal, only close.
    assert not torch.equal(fp32["embedding"], bf16["embedding"])
    emb, views = cosines(fp32["embedding"], bf16["embedding"]), cosines(fp32["view_sum"], bf16["view_sum"])
    assert emb.min() > COSINE, f"embedding cosine per image: min {emb.min():.5f}"
    assert views.min() > COSINE, f"view_sum cosine per image: min {views.min():.5f}"
    # Norms too: view_sum's length carries the diversity score (|sum|^2 per bin).
    torch.testing.assert_close(bf16["view_sum"].norm(dim=1), fp32["view_sum"].norm(dim=1), rtol=1e-2, atol=0)
    assert torch.equal(fp32["texture"], bf16["texture"])  # texture is computed outside autocast
    assert all(v.dtype == torch.float32 for v in bf16.values())  # the stored columns stay fp32


def test_bf16_gradient_features_on_cpu_match_fp32(cifar):
    """DQ's gradient features: g = softmax - onehot(argmax) on bf16 embeddings (fp32 head)."""
    images, ids = cifar
    fp32 = embedder("fp32", features="gradient").embed(images, ids)
    bf16 = embedder("bf16", features="gradient").embed(images, ids)
    same_argmax = (fp32["grad"] < 0).eq(bf16["grad"] < 0).all(dim=1)
    assert same_argmax.float().mean() >= 0.9  # a near-tie may flip the predicted class of a random head
    assert cosines(fp32["grad"], bf16["grad"])[same_argmax].min() > COSINE


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
def test_bf16_on_cuda_matches_fp32_on_cpu(cifar):
    images, ids = cifar
    reference = embedder("fp32", device="cpu").embed(images, ids)
    gpu = embedder("auto", device="cuda")
    assert gpu.amp is torch.bfloat16
    out = gpu.embed(images, ids)
    assert all(v.device.type == "cuda" and v.dtype == torch.float32 for v in out.values())
    assert cosines(reference["embedding"], out["embedding"]).min() > COSINE
    assert cosines(reference["view_sum"], out["view_sum"]).min() > COSINE
    # Same fp32 arithmetic on another device: equal to rounding, not bit-equal.
    torch.testing.assert_close(out["texture"].cpu(), reference["texture"], rtol=1e-5, atol=1e-6)


@cuda
def test_fp32_on_cuda_matches_fp32_on_cpu(cifar):
    """precision=fp32 on CUDA: no autocast (cuDNN may still use TF32 for convolutions)."""
    images, ids = cifar
    reference = embedder("fp32", device="cpu").embed(images, ids)
    gpu = embedder("fp32", device="cuda")
    assert gpu.amp is None
    out = gpu.embed(images, ids)
    assert cosines(reference["embedding"], out["embedding"]).min() > 0.9999
    assert cosines(reference["view_sum"], out["view_sum"]).min() > 0.9999


@cuda
def test_numpy_batch_through_the_actor_on_cuda(cifar):
    """The `map_batches` entry point on CUDA returns fp32 host columns, rejected rows zero."""
    images, ids = cifar
    batch = {
        "sample_id": ids,
        "label": np.zeros(len(ids), np.int64),
        "status": np.array(["ok"] * (len(ids) - 1) + ["rejected"]),
        "reason": np.array([""] * len(ids)),
        "note": np.array([""] * len(ids)),
        "image": images.permute(0, 2, 3, 1).numpy(),
    }
    table = embedder("auto", device="cuda")(batch)
    reference = embedder("fp32", device="cpu")(batch)
    emb = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    ref = np.stack(reference["embedding"].to_numpy(zero_copy_only=False))
    assert not emb[-1].any()
    assert cosines(torch.from_numpy(ref[:-1]), torch.from_numpy(emb[:-1])).min() > COSINE
