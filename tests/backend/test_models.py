import pytest
import torch

from backend.models.layers import WSConv2d
from backend.models.registry import build_model, list_models


def _inputs(n: int = 2, h: int = 64, w: int = 48, c: int = 20) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(n, 3, h, w, generator=g)
    return image, image - 0.45, torch.rand(n, 2, h, w, generator=g), torch.rand(n, 6, h, w, generator=g), \
        torch.rand(n, c, h, w, generator=g)


def test_official_parameter_count_and_keys() -> None:
    m = build_model("sim_r50")
    assert sum(p.numel() for p in m.parameters()) == 46_609_840
    sd = m.state_dict()
    expected = {
        "encoder.conv1.weight": (64, 11, 3, 3), "encoder.conv1_side.weight": (64, 20, 7, 7),
        "encoder.conv2.weight": (64, 64, 3, 3), "encoder.conv3.weight": (128, 64, 3, 3),
        "encoder.layer1.0.conv1.weight": (64, 128, 1, 1), "encoder.layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "decoder.global_module.convs.0.0.weight": (256, 2048, 1, 1),
        "decoder.global_module.convs.3.0.weight": (256, 2048, 3, 3),
        "decoder.global_module.convs.4.1.weight": (256, 2048, 1, 1),
        "decoder.global_module.project.0.weight": (256, 1280, 1, 1),
        "decoder.conv_up1.0.weight": (256, 2304, 3, 3), "decoder.conv_up1.3.weight": (256, 256, 3, 3),
        "decoder.conv_up2.0.weight": (256, 512, 3, 3), "decoder.conv_up3.0.weight": (64, 384, 3, 3),
        "decoder.conv_up4_alpha.4.weight": (1, 16, 1, 1), "decoder.conv_up4_fb.4.weight": (6, 16, 1, 1),
        "decoder.conv_up4_attn.0.weight": (32, 64, 3, 3), "decoder.conv_up4_attn.4.weight": (3, 16, 1, 1),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "decoder.conv_up1.0.bias" in sd and "decoder.conv_up4_alpha.4.bias" not in sd
    assert not any(k.startswith("encoder.fc") for k in sd)
    without_lambda = sum(p.numel() for n, p in m.named_parameters() if "conv_up4_attn" not in n)
    assert without_lambda == 46_586_704


def test_classifier_matches_torchvision_layout() -> None:
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet50(num_classes=20)
    tv.conv1 = torch.nn.Conv2d(4, 64, 7, 2, 3, bias=False)
    ours = build_model("classifier_r50")
    assert {k: v.shape for k, v in tv.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 23_552_148


def test_dilation_schedule_is_output_stride_8() -> None:
    enc = build_model("sim_r50").encoder
    assert enc.layer3[0].conv2.dilation == (1, 1) and enc.layer3[0].conv2.stride == (1, 1)
    assert all(b.conv2.dilation == (2, 2) for b in enc.layer3[1:])
    assert enc.layer4[0].conv2.dilation == (2, 2)
    assert all(b.conv2.dilation == (4, 4) for b in enc.layer4[1:])
    assert enc.layer3[0].downsample[0].stride == (1, 1)


@pytest.mark.parametrize("name", [n for n in list_models("matting") if n != "sim_r50"])
@pytest.mark.parametrize("num_classes", [20, 3])
def test_matting_forward_backward_shapes(name: str, num_classes: int) -> None:
    m = build_model(name, num_classes=num_classes).train()
    out = m(*_inputs(c=num_classes))
    assert set(out) == {"alpha", "fg", "bg", "lambdas"}
    assert out["alpha"].shape == (2, 1, 64, 48) and out["fg"].shape == (2, 3, 64, 48)
    assert out["lambdas"].shape == (2, 3, 64, 48)
    assert 0 <= out["alpha"].min() and out["alpha"].max() <= 1
    sum(v.mean() for v in out.values()).backward()
    assert m.encoder.conv1_side.weight.grad is not None and m.encoder.conv1_side.weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        assert set(m(*_inputs(n=1, c=num_classes))) == {"alpha"}


def test_matting_rejects_unpadded_input() -> None:
    m = build_model("sim_tiny").eval()
    with pytest.raises(ValueError, match="multiples of 8"):
        m(*_inputs(n=1, h=60))


@pytest.mark.parametrize("name", list_models("classifier"))
def test_classifier_outputs(name: str) -> None:
    m = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        logits, cam, feats = m(torch.rand(2, 4, 96, 64))
    assert logits.shape == (2, 7) and cam.shape == (2, 7, 3, 2) and len(feats) == 5
    # The CAM is the fc weight applied to layer4: its spatial mean + bias equals the logits.
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + m.fc.bias, logits, rtol=1e-4, atol=1e-4)


def test_weight_standardisation_formula() -> None:
    conv = WSConv2d(3, 2, 3, bias=False)
    w = conv.weight.detach().flatten(1)
    ref = (w - w.mean(1, keepdim=True)) / (torch.sqrt(w.var(1, unbiased=True, keepdim=True) + 1e-12) + 1e-5)
    torch.testing.assert_close(conv.standardized_weight().flatten(1), ref)
