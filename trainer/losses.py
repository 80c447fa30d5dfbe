"""SIM training losses: one function per term, ``SIMLoss`` combines them (ref §4, paper loss slide).

Conventions (all tensors float, N×C×H×W):
    alpha, alpha_hat: N×1×H×W in [0,1]; image, fg, bg (+ predictions): N×3×H×W in [0,1];
    trimap: N×1×H×W raw values {0, 128, 255}; lambdas: N×3×H×W in [0,1] (λ head, channel order r1, r2, r3).

Choices where paper and official code disagree (each documented at its function):
* every "L1" is Charbonnier sqrt(d² + 1e−12) (official), so the gradient exists at d = 0;
* masked means follow the official normalisation: per sample Σ(loss·mask) / (Σmask + 1) / C, then the
  batch mean — the +1 keeps empty masks finite (the loss is then 0, not NaN);
* the discriminator is frozen (no parameter gradients, eval mode) but differentiable with respect to α̂:
  the official code wraps it in no-grad and rebuilds the feature loss from Python floats, so its L_c and
  L_f never reach the matting network (ref §4.3 item 2). Here they do, and a unit test checks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backend.processing import normalize_image
from backend.protocol import TRIMAP_BG, TRIMAP_FG, TRIMAP_UNKNOWN

CHARBONNIER_EPS = 1e-12
LAPLACIAN_LEVELS = 5


# --------------------------------------------------------------------------- helpers


def charbonnier(diff: torch.Tensor, eps: float = CHARBONNIER_EPS) -> torch.Tensor:
    """Element-wise sqrt(d² + eps): a smooth L1 (official SIM / FBA)."""
    return torch.sqrt(diff * diff + eps)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample Σ(values·mask) / (Σmask + 1) / C, averaged over the batch (official normalisation).

    values: N×C×H×W; mask: N×1×H×W (broadcast over C), 0/1 or soft.
    """
    c = values.shape[1]
    num = (values * mask).flatten(1).sum(1)
    den = mask.flatten(1).sum(1) + 1.0
    return (num / den / c).mean()


def trimap_masks(trimap: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float masks from a raw trimap: unknown (==128), fg (==255), bg (==0), fg_ext (≥128), bg_ext (≤128).

    Exact equality on the 8-bit values, like every official trimap test (ref §9.5).
    """
    return {
        "unknown": (trimap == TRIMAP_UNKNOWN).float(),
        "fg": (trimap == TRIMAP_FG).float(),
        "bg": (trimap == TRIMAP_BG).float(),
        "fg_ext": (trimap >= TRIMAP_UNKNOWN).float(),
        "bg_ext": (trimap <= TRIMAP_UNKNOWN).float(),
    }


def composite(alpha: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """I = αF + (1−α)B."""
    return alpha * fg + (1.0 - alpha) * bg


# Kornia-style first-order Sobel, normalised by the sum of absolute values (÷8) (ref §4.2).
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel Sobel gradients (gx, gy) with replicate padding; same shape as ``x``."""
    c = x.shape[1]
    kx = _SOBEL_X.to(device=x.device, dtype=x.dtype)
    k = torch.stack([kx, kx.t()])[:, None].repeat(c, 1, 1, 1)  # (2C)×1×3×3: gx, gy per channel
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)
    return g[:, 0::2], g[:, 1::2]


def grad_magnitude(x: torch.Tensor) -> torch.Tensor:
    """G(x) = |gx| + |gy| per channel: the official gradient map of the λ and exclusion losses."""
    gx, gy = sobel(x)
    return gx.abs() + gy.abs()


def grad_magnitudes(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``grad_magnitude`` of each tensor (same N, H, W), from one Sobel pass over their channels joined:
    the per-channel result is the same, with one padding and one convolution (and their backward) instead
    of one per tensor. A training step's cost on a GPU is its count of small kernel launches."""
    g = grad_magnitude(torch.cat(xs, dim=1))
    return tuple(torch.split(g, [x.shape[1] for x in xs], dim=1))


# --------------------------------------------------------------------------- Laplacian pyramid


def _binomial_kernel(channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device, dtype=dtype)
    k = torch.outer(k1, k1) / 256.0
    return k[None, None].repeat(channels, 1, 1, 1)


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    # Reflect needs the padded side > 2 px; the coarsest levels of tiny inputs fall back to replicate.
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode=mode), kernel, groups=x.shape[1])


def laplacian_pyramid(x: torch.Tensor, levels: int = LAPLACIAN_LEVELS) -> list[torch.Tensor]:
    """Band-pass levels of ``x`` (ref §4.2): band_k = L_k − up(down(blur(L_k))), L_{k+1} = down(blur(L_k)).

    down keeps every second row/column; up inserts zeros and blurs with the same 5×5 binomial kernel ×4.
    The coarsest low-pass residual is not returned (the official loss ignores it).
    """
    kernel = _binomial_kernel(x.shape[1], x.device, x.dtype)
    bands = []
    cur = x
    for _ in range(levels):
        down = _blur(cur, kernel)[..., ::2, ::2]
        up = torch.zeros(
            down.shape[:2] + (down.shape[2] * 2, down.shape[3] * 2), device=x.device, dtype=x.dtype
        )
        up[..., ::2, ::2] = down
        up = _blur(up, kernel * 4.0)[..., : cur.shape[-2], : cur.shape[-1]]
        bands.append(cur - up)
        cur = down
    return bands


def laplacian_loss(pred: torch.Tensor, target: torch.Tensor, levels: int = LAPLACIAN_LEVELS) -> torch.Tensor:
    """Σ over levels of the mean |band(pred) − band(target)|; whole image, unweighted (official).

    The pyramid is linear, so band(pred) − band(target) = band(pred − target): one pyramid, not two.
    """
    return sum((band.abs().mean() for band in laplacian_pyramid(pred - target, levels)), start=pred.new_zeros(()))


# --------------------------------------------------------------------------- L_alpha


def alpha_l1_loss(alpha_hat: torch.Tensor, alpha: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """(1/|U|) Σ_U ‖α̂ − α‖₁ (Charbonnier)."""
    return masked_mean(charbonnier(alpha_hat - alpha), unknown)


def composition_loss(
    alpha_hat: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, image: torch.Tensor, unknown: torch.Tensor
) -> torch.Tensor:
    """(1/|U|) Σ_U ‖α̂F + (1−α̂)B − I‖₁ with **ground-truth** F and B (DIM-style; ref §4.3 item 3)."""
    return masked_mean(charbonnier(composite(alpha_hat, fg, bg) - image), unknown)


# --------------------------------------------------------------------------- L_FB


def fb_l1_loss(
    fg_hat: torch.Tensor,
    bg_hat: torch.Tensor,
    fg: torch.Tensor,
    bg: torch.Tensor,
    fg_mask: torch.Tensor,
    bg_mask: torch.Tensor,
) -> torch.Tensor:
    """Paper: (1/|F̃|) Σ_F̃ ‖F̂ − F‖₁ + (1/|B̃|) Σ_B̃ ‖B̂ − B‖₁, each term normalised by its own mask.

    The official code normalises both by one joint count and builds F̃ from ``trimap ≥ 0`` (every pixel,
    almost certainly meant ≥ 128); ``SIMLoss`` passes F̃ = trimap ≥ 128 and B̃ = trimap ≤ 128: F and B are
    supervised wherever they can be seen, not where they are fully hidden.
    """
    return masked_mean(charbonnier(fg_hat - fg), fg_mask) + masked_mean(charbonnier(bg_hat - bg), bg_mask)


def fb_composition_loss(
    fg_hat: torch.Tensor,
    bg_hat: torch.Tensor,
    alpha: torch.Tensor,
    image: torch.Tensor,
    unknown: torch.Tensor,
) -> torch.Tensor:
    """(1/|U|) Σ_U ‖αF̂ + (1−α)B̂ − I‖₁ with the **ground-truth** α (official loss_comp_fb, FBA)."""
    return masked_mean(charbonnier(composite(alpha, fg_hat, bg_hat) - image), unknown)


def fb_laplacian_loss(
    fg_hat: torch.Tensor,
    bg_hat: torch.Tensor,
    fg: torch.Tensor,
    bg: torch.Tensor,
    levels: int = LAPLACIAN_LEVELS,
) -> torch.Tensor:
    """½[Lap(F̂, F) + Lap(B̂, B)] over the whole image (official loss_fblap, FBA). F and B have the same
    shape, so each level's mean over their six channels joined is the average of the two means: one pyramid."""
    return laplacian_loss(torch.cat([fg_hat, bg_hat], dim=1), torch.cat([fg, bg], dim=1), levels)


# --------------------------------------------------------------------------- L_g and L_e


GRADIENT_FORMS = ("paper", "code")


def gradient_loss(
    image: torch.Tensor,
    alpha_hat: torch.Tensor,
    fg_hat: torch.Tensor,
    bg_hat: torch.Tensor,
    lambdas: torch.Tensor,
    unknown: torch.Tensor,
    form: str = "paper",
    *,
    maps: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """L_g = (1/|U|) Σ_U ‖∇Î − ∇I‖₁ with learnable content-sensitive weights (λ head).

    ``form="paper"`` (default, the issue's formula): ∇Î = λ1∇α̂ + (1−λ2)∇F̂ + λ2∇B̂ — the model of
    ∇I = (F−B)∇α + α∇F + (1−α)∇B with λ1 standing in for (F−B) and λ2 for (1−α). The λ head's channels are
    named by what they weight in the official code (r1 ∇F, r2 ∇B, r3 ∇α), so λ1 = r3 (channel 2, the α
    weight) and λ2 = r2 (channel 1, the B weight); r1 (channel 0) is replaced by 1−λ2 and unused.
    ``form="code"``: ∇Î = r1∇F̂ + r2∇B̂ + r3∇α̂ with three independent weights (official).

    ∇ is the official gradient map G = |gx| + |gy| (Sobel ÷8) per channel: magnitudes, because sigmoid
    weights in [0,1] cannot carry the sign of (F−B). The 1-channel α term broadcasts over RGB.
    ``maps``: ``grad_magnitudes(alpha_hat, fg_hat, bg_hat, image)`` when the caller has them already
    (``SIMLoss`` computes them once for L_g and L_e).
    """
    if form not in GRADIENT_FORMS:
        raise ValueError(f"gradient form must be one of {GRADIENT_FORMS}, got {form!r}")
    r1, r2, r3 = lambdas[:, 0:1], lambdas[:, 1:2], lambdas[:, 2:3]
    w_alpha, w_fg, w_bg = (r3, 1.0 - r2, r2) if form == "paper" else (r3, r1, r2)
    g_alpha, g_fg, g_bg, g_image = maps if maps is not None else grad_magnitudes(alpha_hat, fg_hat, bg_hat, image)
    pred = w_alpha * g_alpha + w_fg * g_fg + w_bg * g_bg
    return masked_mean(charbonnier(pred - g_image), unknown)


def exclusion_loss(
    alpha_hat: torch.Tensor, fg_hat: torch.Tensor, bg_hat: torch.Tensor, unknown: torch.Tensor, *,
    maps: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """L_e = (1/|U|) Σ_U ‖∇F̂‖₁‖∇B̂‖₁ + ‖∇α̂‖₁‖∇B̂‖₁ (paper; FBA's F–B exclusion plus an α–B term).

    Masked to the unknown region as the paper's formula writes it (the official code averages over
    the whole image). ``maps``: the gradient maps of α̂, F̂, B̂ (first three), as for ``gradient_loss``.
    """
    g_alpha, g_fg, g_b = maps[:3] if maps is not None else grad_magnitudes(alpha_hat, fg_hat, bg_hat)
    return masked_mean(g_fg * g_b + g_alpha * g_b, unknown)


# --------------------------------------------------------------------------- discriminator: L_c and L_f


DISC_INPUTS = ("fg_alpha", "alpha")


def discriminator_input(alpha: torch.Tensor, fg: torch.Tensor | None, mode: str = "fg_alpha") -> torch.Tensor:
    """4-channel discriminator input (same architecture as the patch classifier).

    fg_alpha (official, ref §3): [ImageNet-normalised GT foreground, α]. alpha: [α as a grey image,
    ImageNet-normalised, α] — the paper's alpha-only discriminator in the 4-channel architecture.
    """
    if mode not in DISC_INPUTS:
        raise ValueError(f"discriminator input must be one of {DISC_INPUTS}, got {mode!r}")
    if mode == "fg_alpha":
        if fg is None:
            raise ValueError("discriminator input 'fg_alpha' needs the foreground")
        rgb = fg
    else:
        rgb = alpha.expand(-1, 3, -1, -1)
    return torch.cat([normalize_image(rgb), alpha], dim=1)


CLS_TARGETS = ("soft", "label", "bce")


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy in float32 ignoring label −1. When every label is −1 (only samples of unknown class)
    it is a zero that keeps the graph (DDP needs every rank to backward) but learns nothing."""
    if not bool((labels >= 0).any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=-1, label_smoothing=label_smoothing)


def classification_loss(
    fake_logits: torch.Tensor,
    real_logits: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    target: str = "soft",
) -> torch.Tensor:
    """L_c: the frozen discriminator should classify α̂ as it classifies α.

    soft (default, paper): −Σ_j p̂_j log p_j with p̂ = softmax(D(α)) (GT) and p = softmax(D(α̂)); its minimum
        is the entropy of p̂, not 0. label: cross-entropy of D(α̂) against the class id (−1 = unknown class,
        ignored). bce (official
        code): BCE(sigmoid(D(α̂)), sigmoid(D(α))) over the classes.
    """
    if target == "soft":
        if real_logits is None:
            raise ValueError("soft classification target needs the real logits")
        p_real = torch.softmax(real_logits.float(), dim=1)
        return -(p_real * torch.log_softmax(fake_logits.float(), dim=1)).sum(1).mean()
    if target == "label":
        if labels is None:
            raise ValueError("label classification target needs class ids")
        return masked_cross_entropy(fake_logits, labels)
    if target == "bce":
        if real_logits is None:
            raise ValueError("bce classification target needs the real logits")
        return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.sigmoid(real_logits.float()))
    raise ValueError(f"classification target must be one of {CLS_TARGETS}, got {target!r}")


def feature_loss(fake_feats: Sequence[torch.Tensor], real_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_f = Σ_k (1/|f_k|) ‖f̂_k − f_k‖² over the discriminator features [l1, l2, l3, l4, pooled].

    The paper writes ‖·‖₂ over |f_k| elements; we read it as the per-element squared error (the official
    code's MSE), summed over the five features as the paper's Σ_k does (the code averages them).
    """
    if len(fake_feats) != len(real_feats):
        raise ValueError(f"{len(fake_feats)} fake vs {len(real_feats)} real features")
    return sum(
        (F.mse_loss(f.float(), r.float()) for f, r in zip(fake_feats, real_feats)),
        start=fake_feats[0].new_zeros((), dtype=torch.float32),
    )


def freeze(module: nn.Module) -> nn.Module:
    """Frozen but differentiable: parameters take no gradient, BN/dropout in eval mode. Gradients still
    flow *through* the module into its input (the fix for ref §4.3 item 2)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def discriminator_losses(
    discriminator: nn.Module,
    alpha_hat: torch.Tensor,
    alpha: torch.Tensor,
    fg: torch.Tensor | None,
    labels: torch.Tensor | None = None,
    *,
    input_mode: str = "fg_alpha",
    cls_target: str = "soft",
) -> dict[str, torch.Tensor]:
    """L_c and L_f through a frozen discriminator. The real pass needs no graph (targets only); the fake
    pass keeps its graph so both losses back-propagate into ``alpha_hat``."""
    if discriminator.training or any(p.requires_grad for p in discriminator.parameters()):
        raise ValueError(
            "the discriminator must be frozen (trainer.losses.freeze) before it is used in a loss"
        )
    with torch.no_grad():
        real_logits, _, real_feats = discriminator(discriminator_input(alpha, fg, input_mode))
    fake_logits, _, fake_feats = discriminator(discriminator_input(alpha_hat, fg, input_mode))
    return {
        "cls": classification_loss(fake_logits, real_logits, labels, cls_target),
        "feat": feature_loss(fake_feats, real_feats),
    }


# --------------------------------------------------------------------------- total


@dataclass
class LossWeights:
    """Total L = Lα + 0.2(L_FB + L_f + L_g + L_e) + 0.1 L_c (paper); Lα = l1 + comp + lap inside."""

    alpha: float = 1.0
    comp: float = 1.0
    lap: float = 1.0
    fb: float = 0.2
    feat: float = 0.2
    grad: float = 0.2
    excl: float = 0.2
    cls: float = 0.1


class SIMLoss:
    """All SIM terms from the network outputs and a batch.

    Args:
        weights: term weights (``LossWeights``).
        gradient_form: "paper" or "code" (see ``gradient_loss``).
        disc_input: "fg_alpha" or "alpha" (see ``discriminator_input``).
        cls_target: "soft", "label" or "bce" (see ``classification_loss``).
        lap_levels: Laplacian pyramid levels (5, official).
    """

    def __init__(
        self,
        weights: LossWeights | None = None,
        *,
        gradient_form: str = "paper",
        disc_input: str = "fg_alpha",
        cls_target: str = "soft",
        lap_levels: int = LAPLACIAN_LEVELS,
    ) -> None:
        if gradient_form not in GRADIENT_FORMS:
            raise ValueError(f"gradient form must be one of {GRADIENT_FORMS}, got {gradient_form!r}")
        if disc_input not in DISC_INPUTS:
            raise ValueError(f"discriminator input must be one of {DISC_INPUTS}, got {disc_input!r}")
        if cls_target not in CLS_TARGETS:
            raise ValueError(f"classification target must be one of {CLS_TARGETS}, got {cls_target!r}")
        self.w = weights or LossWeights()
        self.gradient_form = gradient_form
        self.disc_input = disc_input
        self.cls_target = cls_target
        self.lap_levels = lap_levels

    @property
    def needs_aux(self) -> bool:
        """Whether the F/B and λ heads are used (they are parameters DDP must see in the graph)."""
        return any(w > 0 for w in (self.w.fb, self.w.grad, self.w.excl))

    def __call__(
        self,
        out: dict[str, torch.Tensor],
        batch: dict[str, torch.Tensor],
        discriminator: nn.Module | None = None,
    ) -> dict[str, torch.Tensor]:
        """Args:
            out: SIMNet outputs ("alpha", and "fg", "bg", "lambdas" when aux terms are on).
            batch: "image", "fg", "bg", "alpha", "trimap" (N×1×H×W raw), optional "class_id".
            discriminator: frozen discriminator, or None (L_c = L_f = 0).
        Returns:
            every term (unweighted; "l_alpha", "l_fb" are the weighted group sums) and "total".
        """
        w = self.w
        a_hat = out["alpha"].float()
        image, fg, bg, alpha = (batch[k].float() for k in ("image", "fg", "bg", "alpha"))
        m = trimap_masks(batch["trimap"])
        zero = a_hat.new_zeros(())
        t: dict[str, torch.Tensor] = {}
        t["alpha_l1"] = alpha_l1_loss(a_hat, alpha, m["unknown"])
        t["comp"] = composition_loss(a_hat, fg, bg, image, m["unknown"]) if w.comp else zero
        t["lap"] = laplacian_loss(a_hat, alpha, self.lap_levels) if w.lap else zero
        t["l_alpha"] = w.alpha * t["alpha_l1"] + w.comp * t["comp"] + w.lap * t["lap"]
        if self.needs_aux:
            if "fg" not in out or "lambdas" not in out:
                raise ValueError(
                    "F/B, gradient and exclusion losses need the aux outputs (forward with aux=True)"
                )
            f_hat, b_hat, lam = out["fg"].float(), out["bg"].float(), out["lambdas"].float()
            t["fb_l1"] = fb_l1_loss(f_hat, b_hat, fg, bg, m["fg_ext"], m["bg_ext"])
            t["fb_comp"] = fb_composition_loss(f_hat, b_hat, alpha, image, m["unknown"])
            t["fb_lap"] = fb_laplacian_loss(f_hat, b_hat, fg, bg, self.lap_levels)
            t["l_fb"] = t["fb_l1"] + t["fb_comp"] + t["fb_lap"]
            maps = grad_magnitudes(a_hat, f_hat, b_hat, image)  # one Sobel pass for L_g and L_e
            t["grad"] = gradient_loss(image, a_hat, f_hat, b_hat, lam, m["unknown"], self.gradient_form, maps=maps)
            t["excl"] = exclusion_loss(a_hat, f_hat, b_hat, m["unknown"], maps=maps)
        else:
            t["l_fb"] = t["grad"] = t["excl"] = zero
        if discriminator is not None and (w.cls or w.feat):
            t.update(
                discriminator_losses(
                    discriminator,
                    a_hat,
                    alpha,
                    fg,
                    batch.get("class_id"),
                    input_mode=self.disc_input,
                    cls_target=self.cls_target,
                )
            )
        else:
            t["cls"] = t["feat"] = zero
        t["total"] = (
            t["l_alpha"]
            + w.fb * t["l_fb"]
            + w.feat * t["feat"]
            + w.grad * t["grad"]
            + w.excl * t["excl"]
            + w.cls * t["cls"]
        )
        return t
