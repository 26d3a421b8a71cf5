import io
import os
import subprocess
import sys

import pytest
import torch
from util import SHARED, make_bucket, needs_shared

from adq_ray import storage
from adq_ray.errors import WeightsError
from adq_ray.models import create_model, load_state_dict

RESNET20 = SHARED / "weights" / "resnet20-12fca82f.th"


@needs_shared
def test_cifar_resnet20_loads_the_shared_checkpoint_exactly():
    model = create_model("cifar_resnet20", str(RESNET20))
    state = load_state_dict(str(RESNET20))
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.forward_head(model.forward_features(torch.zeros(1, 3, 32, 32)), pre_logits=True).shape == (1, 64)


def test_weights_from_s3_match_local(s3_server, tmp_path):
    local = create_model("resnet18", "random")
    buffer = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in local.state_dict().items()}}, buffer)
    uri = make_bucket("weights") + "/resnet18.pth"
    storage.write_bytes(uri, buffer.getvalue())
    remote = create_model("resnet18", uri)
    for (k, a), b in zip(local.state_dict().items(), remote.state_dict().values()):
        assert torch.equal(a, b), k


@needs_shared
def test_checkpoint_without_head_loads_and_wrong_one_fails(tmp_path):
    model = create_model("resnet18", "random")
    headless = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    torch.save(headless, tmp_path / "backbone.pth")
    assert torch.equal(create_model("resnet18", str(tmp_path / "backbone.pth")).conv1.weight, model.conv1.weight)
    with pytest.raises(ValueError, match="do not fit"):
        create_model("resnet18", str(RESNET20))


class _RunsCode:
    """A pickled object whose unpickling would create a folder: what a malicious checkpoint does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_bad_model_inputs_fail_clearly(tmp_path):
    """Each bad model input fails with its own error type and a message naming the input and the fix.

    Planted bugs caught: torch.load(weights_only=False) in load_state_dict (the pickled code then runs and
    the marker folder appears), and a checkpoint of non-tensors accepted (it would fail later, elsewhere).
    """
    with pytest.raises(ValueError, match="unknown model 'no_such_net': not a timm architecture"):
        create_model("no_such_net", "random")
    with pytest.raises(FileNotFoundError, match=r"cannot read weights from '.*missing\.pth'"):
        create_model("resnet18", str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth' are not a plain checkpoint of tensors .*state_dict\(\)"):
        create_model("resnet18", str(tmp_path / "junk.pth"))
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "numbers.pth")
    with pytest.raises(WeightsError, match=r"numbers\.pth' does not hold a state dict of tensors"):
        create_model("resnet18", str(tmp_path / "numbers.pth"))
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _RunsCode(str(marker))}, tmp_path / "code.pth")
    with pytest.raises(WeightsError, match=r"code\.pth' are not a plain checkpoint of tensors"):
        create_model("resnet18", str(tmp_path / "code.pth"))
    assert not marker.exists()


def test_hub_weights_without_network_say_what_to_do():
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: use a fresh interpreter.
    code = "from adq_ray.models import create_model; create_model('resnet18', 'hub')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "could not fetch pretrained weights for 'resnet18'" in result.stderr
    assert "local path or s3:// URL" in result.stderr
