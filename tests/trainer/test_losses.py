"""Every SIM loss term on tiny tensors: known values, and that the gradient reaches the prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from backend.models.registry import build_model
from trainer import losses as L

H = W = 8


def _unknown_interior() -> torch.Tensor:
    """1×1×8×8 trimap: unknown (128) on the 4×4 interior, bg (0) elsewhere."""
    t = torch.zeros(1, 1, H, W)
    t[..., 2:6, 2:6] = 128
    return t


def _ramp_x(slope: float, c: int = 1) -> torch.Tensor:
    return (torch.arange(W, dtype=torch.float32) * slope).view(1, 1, 1, W).expand(1, c, H, W).clone()


def _ramp_y(slope: float, c: int = 1) -> torch.Tensor:
    return (torch.arange(H, dtype=torch.float32) * slope).view(1, 1, H, 1).expand(1, c, H, W).clone()


def _grad_reaches(t: torch.Tensor) -> bool:
    return t.grad is not None and bool(torch.isfinite(t.grad).all()) and float(t.grad.abs().sum()) > 0


# --------------------------------------------------------------------------- helpers


def test_charbonnier_and_masked_mean():
    assert float(L.charbonnier(torch.tensor(0.0))) == pytest.approx(1e-6)
    assert float(L.charbonnier(torch.tensor(-0.5))) == pytest.approx(0.5)
    vals = torch.ones(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2] = 1  # 8 px in sample 0, none in sample 1
    # sample 0: 3·8 / (8 + 1) / 3 = 8/9; sample 1: 0 → batch mean 4/9
    assert float(L.masked_mean(vals, mask)) == pytest.approx(4 / 9)


def test_trimap_masks_exact_values():
    t = torch.tensor([0.0, 127.0, 128.0, 255.0]).view(1, 1, 1, 4)
    m = L.trimap_masks(t)
    assert m["unknown"].flatten().tolist() == [0, 0, 1, 0]
    assert m["fg"].flatten().tolist() == [0, 0, 0, 1]
    assert m["bg_ext"].flatten().tolist() == [1, 1, 1, 0]
    assert m["fg_ext"].flatten().tolist() == [0, 0, 1, 1]


def test_sobel_is_normalised():
    gx, gy = L.sobel(_ramp_x(0.1))
    assert torch.allclose(gx[..., 1:-1, 1:-1], torch.full_like(gx[..., 1:-1, 1:-1], 0.1))
    assert float(gy.abs().max()) < 1e-7
    assert float(gx[0, 0, 3, 0]) == pytest.approx(0.05)  # replicate border: half the slope


# --------------------------------------------------------------------------- L_alpha


def test_alpha_l1_known_value_and_grad():
    alpha = torch.zeros(1, 1, H, W)
    a_hat = torch.full((1, 1, H, W), 0.5, requires_grad=True)
    unknown = L.trimap_masks(_unknown_interior())["unknown"]
    loss = L.alpha_l1_loss(a_hat, alpha, unknown)
    assert loss.item() == pytest.approx(0.5 * 16 / 17, rel=1e-5)
    loss.backward()
    assert _grad_reaches(a_hat)
    assert float(a_hat.grad[0, 0, 0, 0]) == 0.0  # known pixels take no gradient


def test_composition_uses_gt_fg_bg():
    alpha = torch.full((1, 1, H, W), 0.4)
    fg, bg = torch.ones(1, 3, H, W), torch.zeros(1, 3, H, W)
    image = L.composite(alpha, fg, bg)
    a_hat = (alpha + 0.25).requires_grad_()
    unknown = L.trimap_masks(_unknown_interior())["unknown"]
    loss = L.composition_loss(a_hat, fg, bg, image, unknown)
    assert loss.item() == pytest.approx(0.25 * 16 / 17, rel=1e-5)
    loss.backward()
    assert _grad_reaches(a_hat)
    perfect = L.composition_loss(alpha, fg, bg, image, unknown)
    assert float(perfect) < 1e-5


def _band0_reference(x: np.ndarray) -> np.ndarray:
    """Independent first Laplacian band: scipy 'mirror' = PyTorch 'reflect' padding."""
    k1 = np.array([1, 4, 6, 4, 1], np.float64)
    k = np.outer(k1, k1) / 256
    down = ndimage.convolve(x, k, mode="mirror")[::2, ::2]
    up = np.zeros((down.shape[0] * 2, down.shape[1] * 2))
    up[::2, ::2] = down
    up = ndimage.convolve(up, 4 * k, mode="mirror")[: x.shape[0], : x.shape[1]]
    return x - up


def test_laplacian_pyramid_matches_reference_and_ignores_dc():
    rng = np.random.default_rng(0)
    x = rng.random((16, 16))
    bands = L.laplacian_pyramid(torch.from_numpy(x).view(1, 1, 16, 16), levels=3)
    assert [tuple(b.shape[-2:]) for b in bands] == [(16, 16), (8, 8), (4, 4)]
    np.testing.assert_allclose(bands[0][0, 0].numpy(), _band0_reference(x), atol=1e-12)
    const = torch.full((1, 1, 64, 64), 0.7)  # 5 levels down to 4×4
    assert all(float(b.abs().max()) < 1e-6 for b in L.laplacian_pyramid(const))
    # A constant offset lives only in the (ignored) low-pass residual.
    t = torch.from_numpy(x).float().view(1, 1, 16, 16)
    assert float(L.laplacian_loss(t + 0.3, t, levels=3)) < 1e-6


def test_laplacian_loss_grad_and_linearity():
    target = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    delta = torch.zeros_like(target)
    delta[..., 10, 12] = 1.0
    pred = (target + 0.5 * delta).requires_grad_()
    loss = L.laplacian_loss(pred, target)
    # The pyramid is linear: loss(target + kδ) = k · loss(δ, 0).
    assert loss.item() == pytest.approx(
        0.5 * float(L.laplacian_loss(delta, torch.zeros_like(delta))), rel=1e-5
    )
    assert loss.item() > 0
    loss.backward()
    assert _grad_reaches(pred)


def test_one_pyramid_and_one_sobel_pass_equal_the_per_tensor_definitions():
    """The losses build one Laplacian pyramid of the difference (and of F, B joined) and one Sobel pass
    over joined tensors: the same values as the per-tensor definitions (fewer kernels per GPU step)."""
    g = torch.Generator().manual_seed(4)
    f_hat, b_hat, fg, bg = (torch.rand(2, 3, 40, 48, generator=g) for _ in range(4))
    a_hat = torch.rand(2, 1, 40, 48, generator=g)

    def two_pyramids(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sum(F.l1_loss(x, y) for x, y in zip(L.laplacian_pyramid(p), L.laplacian_pyramid(t)))

    assert float(L.laplacian_loss(f_hat, fg)) == pytest.approx(float(two_pyramids(f_hat, fg)), rel=1e-5)
    assert float(L.fb_laplacian_loss(f_hat, b_hat, fg, bg)) == pytest.approx(
        0.5 * float(two_pyramids(f_hat, fg) + two_pyramids(b_hat, bg)), rel=1e-5)
    for joined, single in zip(L.grad_magnitudes(a_hat, f_hat, b_hat), (a_hat, f_hat, b_hat)):
        assert torch.equal(joined, L.grad_magnitude(single))
    # SIMLoss passes one set of maps to L_g and L_e: the same values as each computing its own
    image, lam, unknown = fg, torch.rand(2, 3, 40, 48, generator=g), torch.rand(2, 1, 40, 48, generator=g) > 0.5
    maps = L.grad_magnitudes(a_hat, f_hat, b_hat, image)
    assert torch.equal(L.gradient_loss(image, a_hat, f_hat, b_hat, lam, unknown, maps=maps),
                       L.gradient_loss(image, a_hat, f_hat, b_hat, lam, unknown))
    assert torch.equal(L.exclusion_loss(a_hat, f_hat, b_hat, unknown, maps=maps),
                       L.exclusion_loss(a_hat, f_hat, b_hat, unknown))


# --------------------------------------------------------------------------- L_FB


def test_fb_terms_known_values_and_grads():
    alpha = torch.full((1, 1, H, W), 0.5)
    fg, bg = torch.full((1, 3, H, W), 0.8), torch.full((1, 3, H, W), 0.2)
    image = L.composite(alpha, fg, bg)
    m = L.trimap_masks(_unknown_interior())
    f_hat = (fg + 0.1).requires_grad_()
    b_hat = bg.clone().requires_grad_()
    l1 = L.fb_l1_loss(f_hat, b_hat, fg, bg, m["fg_ext"], m["bg_ext"])
    # F term over the 16 unknown px: 0.1·16/17; B term ≈ 0 (Charbonnier floor 1e−6).
    assert l1.item() == pytest.approx(0.1 * 16 / 17 + 1e-6 * 64 / 65, rel=1e-4)
    comp = L.fb_composition_loss(f_hat, b_hat, alpha, image, m["unknown"])
    assert comp.item() == pytest.approx(0.05 * 16 / 17, rel=1e-4)  # α·0.1 = 0.05
    lap = L.fb_laplacian_loss(f_hat, b_hat, fg, bg, levels=2)
    assert lap.item() < 1e-6  # constant offsets only
    (l1 + comp).backward()
    assert _grad_reaches(f_hat) and _grad_reaches(b_hat)


# --------------------------------------------------------------------------- L_g and L_e


@pytest.mark.parametrize("form, w_fg", [("paper", 1 - 0.2), ("code", 0.9)])
def test_gradient_loss_lambda_mapping(form: str, w_fg: float):
    # λ channels: r1 = 0.9 (∇F weight, code form), r2 = 0.2 (∇B weight), r3 = 0.5 (∇α weight).
    lambdas = torch.tensor([0.9, 0.2, 0.5]).view(1, 3, 1, 1).expand(1, 3, H, W).clone().requires_grad_()
    a_hat = _ramp_x(0.1).requires_grad_()
    f_hat = _ramp_y(0.2, 3).requires_grad_()
    b_hat = torch.zeros(1, 3, H, W, requires_grad=True)
    image = torch.zeros(1, 3, H, W)  # G(I) = 0
    unknown = L.trimap_masks(_unknown_interior())["unknown"]
    loss = L.gradient_loss(image, a_hat, f_hat, b_hat, lambdas, unknown, form)
    # Interior: G(α̂) = 0.1, G(F̂) = 0.2, G(B̂) = 0 → |0.5·0.1 + w_fg·0.2|
    expected = (0.5 * 0.1 + w_fg * 0.2) * 16 / 17
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert _grad_reaches(a_hat) and _grad_reaches(f_hat) and _grad_reaches(lambdas)
    if form == "paper":
        assert float(lambdas.grad[:, 0].abs().sum()) == 0.0  # r1 unused in the paper form
    with pytest.raises(ValueError):
        L.gradient_loss(image, a_hat, f_hat, b_hat, lambdas, unknown, "bogus")


def test_gradient_loss_zero_when_model_matches_image():
    a_hat = _ramp_x(0.05)
    fg, bg = torch.ones(1, 3, H, W), torch.zeros(1, 3, H, W)
    image = L.composite(a_hat, fg, bg)  # ∇I = (F−B)∇α = ∇α
    lambdas = torch.zeros(1, 3, H, W)
    lambdas[:, 2] = 1.0  # λ1 = 1 (α weight); λ2 = 0 → F weight 1, but F is flat
    unknown = torch.ones(1, 1, H, W)
    assert float(L.gradient_loss(image, a_hat, fg, bg, lambdas, unknown, "paper")) < 1e-5


def test_exclusion_loss_known_value_and_grad():
    f_hat = _ramp_x(0.2, 3).requires_grad_()
    b_hat = _ramp_y(0.3, 3).requires_grad_()
    a_hat = _ramp_x(0.1).requires_grad_()
    unknown = L.trimap_masks(_unknown_interior())["unknown"]
    loss = L.exclusion_loss(a_hat, f_hat, b_hat, unknown)
    assert loss.item() == pytest.approx((0.2 * 0.3 + 0.1 * 0.3) * 16 / 17, rel=1e-4)
    loss.backward()
    assert _grad_reaches(a_hat) and _grad_reaches(f_hat) and _grad_reaches(b_hat)
    flat_b = torch.zeros(1, 3, H, W)
    assert L.exclusion_loss(a_hat, f_hat, flat_b, unknown).item() == 0.0


# --------------------------------------------------------------------------- L_c and L_f


def test_classification_targets_known_values():
    c = 5
    zeros = torch.zeros(2, c)
    assert float(L.classification_loss(zeros, zeros, target="soft")) == pytest.approx(math.log(c))
    labels = torch.tensor([1, 3])
    assert float(L.classification_loss(zeros, labels=labels, target="label")) == pytest.approx(math.log(c))
    assert float(L.classification_loss(zeros, zeros, target="bce")) == pytest.approx(math.log(2))
    real = torch.tensor([[10.0, -10, -10, -10, -10]])
    good = L.classification_loss(real.clone(), real, target="soft")
    bad = L.classification_loss(real.flip(1), real, target="soft")
    assert float(good) < 1e-3 < float(bad)
    with pytest.raises(ValueError):
        L.classification_loss(zeros, None, target="soft")


def test_feature_loss_known_value():
    real = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 4)]
    fake = [torch.full((1, 2, 2, 2), 0.5), torch.full((1, 4), 2.0)]
    assert float(L.feature_loss(fake, real)) == pytest.approx(0.25 + 4.0)


def test_discriminator_input_modes():
    alpha = torch.rand(2, 1, H, W)
    fg = torch.rand(2, 3, H, W)
    x = L.discriminator_input(alpha, fg, "fg_alpha")
    assert x.shape == (2, 4, H, W) and torch.equal(x[:, 3:], alpha)
    y = L.discriminator_input(alpha, None, "alpha")
    assert y.shape == (2, 4, H, W)
    with pytest.raises(ValueError):
        L.discriminator_input(alpha, None, "fg_alpha")


@pytest.mark.parametrize("mode", ["fg_alpha", "alpha"])
def test_gradient_flows_through_frozen_discriminator(mode: str):
    torch.manual_seed(0)
    disc = L.freeze(build_model("classifier_tiny", num_classes=4))
    alpha = torch.rand(2, 1, 64, 64)
    fg = torch.rand(2, 3, 64, 64)
    a_hat = torch.rand(2, 1, 64, 64, requires_grad=True)
    terms = L.discriminator_losses(
        disc, a_hat, alpha, fg, torch.tensor([0, 2]), input_mode=mode, cls_target="soft"
    )
    assert terms["feat"].item() > 0
    terms["cls"].backward(retain_graph=True)
    assert _grad_reaches(a_hat)  # the official code's no-grad bug (ref §4.3 item 2) would leave this None
    a_hat.grad = None
    terms["feat"].backward()
    assert _grad_reaches(a_hat)
    assert all(p.grad is None for p in disc.parameters())  # frozen: no parameter gradients
    assert not disc.training


def test_unfrozen_discriminator_is_refused():
    disc = build_model("classifier_tiny", num_classes=4)
    a = torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match="frozen"):
        L.discriminator_losses(disc, a, a, torch.rand(1, 3, 32, 32))


# --------------------------------------------------------------------------- SIMLoss on the real network


def _batch(n: int = 2, s: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    alpha = torch.zeros(n, 1, s, s)
    alpha[..., s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 1.0
    alpha[..., s // 4 - 4 : s // 4 + 4, :] = torch.rand(n, 1, 8, s, generator=g)
    fg, bg = torch.rand(n, 3, s, s, generator=g), torch.rand(n, 3, s, s, generator=g)
    trimap = torch.full((n, 1, s, s), 128.0)
    trimap[alpha == 0] = 0
    trimap[..., s // 4 + 8 : 3 * s // 4 - 8, s // 4 + 8 : 3 * s // 4 - 8] = 255
    return {
        "image": L.composite(alpha, fg, bg),
        "fg": fg,
        "bg": bg,
        "alpha": alpha,
        "trimap": trimap,
        "class_id": torch.arange(n) % 3,
    }


def test_simloss_total_weights_and_gradients_reach_every_head():
    from backend.processing import normalize_image

    torch.manual_seed(0)
    model = build_model("sim_tiny", num_classes=3).train()
    disc = L.freeze(build_model("classifier_tiny", num_classes=3))
    b = _batch()
    t2 = torch.cat([(b["trimap"] == 0).float(), (b["trimap"] == 255).float()], 1)
    out = model(
        b["image"], normalize_image(b["image"]), t2, torch.zeros(2, 6, 64, 64), torch.zeros(2, 3, 64, 64)
    )
    loss = L.SIMLoss()
    terms = loss(out, b, disc)
    w = L.LossWeights()
    expected = (
        terms["alpha_l1"]
        + terms["comp"]
        + terms["lap"]
        + 0.2 * (terms["l_fb"] + terms["feat"] + terms["grad"] + terms["excl"])
        + 0.1 * terms["cls"]
    )
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert (w.fb, w.feat, w.grad, w.excl, w.cls) == (0.2, 0.2, 0.2, 0.2, 0.1)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    heads = {
        "conv_up4_alpha": model.decoder.conv_up4_alpha,
        "conv_up4_fb": model.decoder.conv_up4_fb,
        "conv_up4_attn": model.decoder.conv_up4_attn,
    }
    for name, head in heads.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), name


def test_discriminator_terms_alone_train_the_matting_network():
    """With only L_c + L_f switched on, the matting network still receives gradients (via α̂)."""
    from backend.processing import normalize_image

    torch.manual_seed(0)
    model = build_model("sim_tiny", num_classes=3).train()
    disc = L.freeze(build_model("classifier_tiny", num_classes=3))
    b = _batch()
    t2 = torch.cat([(b["trimap"] == 0).float(), (b["trimap"] == 255).float()], 1)
    out = model(
        b["image"], normalize_image(b["image"]), t2, torch.zeros(2, 6, 64, 64), torch.zeros(2, 3, 64, 64)
    )
    weights = L.LossWeights(alpha=0, comp=0, lap=0, fb=0, grad=0, excl=0, feat=1.0, cls=1.0)
    terms = L.SIMLoss(weights)(out, b, disc)
    terms["total"].backward()
    g = model.decoder.conv_up4_alpha[0].weight.grad
    assert g is not None and float(g.abs().sum()) > 0
