"""Multi-label losses (benzarr.losses): their formulas, their parsing, and a run that records and reuses one."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benzarr.errors import InvalidArgumentError
from benzarr.evaluate import evaluate_run
from benzarr.losses import AsymmetricLoss, FocalLoss, create_loss, parse_loss
from benzarr.split import make_split
from benzarr.store import open_store
from benzarr.train import TrainConfig, train
from tests.conftest import copy_tree

CLI = [sys.executable, "-m", "benzarr_cli"]


def _batch(seed: int, rows: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=g) * 6  # saturated sigmoids too
    target = (torch.rand(rows, classes, generator=g) < 0.2).float()
    return logits, target


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), classes=st.integers(1, 43))
def test_focal_and_asl_without_focusing_equal_bce(seed: int, rows: int, classes: int) -> None:
    logits, target = _batch(seed, rows, classes)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    for spec in ("focal:gamma=0,alpha=-1", "asl:gamma_neg=0,gamma_pos=0,clip=0"):
        assert torch.allclose(create_loss(spec)(logits, target), bce, rtol=1e-5, atol=1e-6), spec


def test_asl_follows_the_papers_formula_term_by_term() -> None:
    x = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(x, y)
    p = [1 / (1 + math.exp(-v)) for v in x[0].tolist()]
    terms = []
    for pi, yi in zip(p, y[0].tolist()):
        if yi:
            terms.append((1 - pi) ** 1 * math.log(pi))
        else:
            pm = max(pi - 0.05, 0.0)
            terms.append(pm ** 4 * math.log(1 - pm))
    assert loss.item() == pytest.approx(-sum(terms) / 4, rel=1e-5)
    # an easy negative below the clip costs nothing, and gets no gradient
    easy = torch.tensor([[-4.0]], requires_grad=True)  # p = 0.018 < 0.05
    value = AsymmetricLoss()(easy, torch.zeros(1, 1))
    value.backward()
    assert value.item() == 0 and easy.grad is not None and easy.grad.item() == 0


def test_focal_weighs_easy_terms_less_than_bce() -> None:
    logits, target = _batch(3, 64, 43)
    focal = FocalLoss(gamma=2, alpha=-1)(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert 0 < focal.item() < bce.item()
    assert FocalLoss()(logits.bfloat16(), target).dtype == torch.float32  # computed in float32 under amp


def _asl_paper_code(x: torch.Tensor, y: torch.Tensor, gamma_neg: float, gamma_pos: float, clip: float) -> torch.Tensor:
    """Alibaba-MIIL/ASL ``AsymmetricLoss.forward`` (eps 1e-8), as the mean instead of the sum."""
    xs_pos = torch.sigmoid(x)
    xs_neg = (1 - xs_pos + clip).clamp(max=1) if clip > 0 else 1 - xs_pos
    loss = y * torch.log(xs_pos.clamp(min=1e-8)) + (1 - y) * torch.log(xs_neg.clamp(min=1e-8))
    pt = xs_pos * y + xs_neg * (1 - y)
    return -(loss * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))).mean()


def test_losses_match_independent_references_with_finite_gradients_at_extreme_logits() -> None:
    from torchvision.ops import sigmoid_focal_loss

    logits, target = _batch(7, 6, 19)
    extreme = torch.tensor([[50.0, -50.0, 50.0, -50.0, 100.0, -100.0, 20.0, -20.0, 0.0]])
    cases = [(logits, target), (logits, torch.zeros_like(logits)), (logits, torch.ones_like(logits)),
             (extreme, torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]]))]
    F = torch.nn.functional
    for x, y in cases:
        for dtype in (torch.float32, torch.bfloat16):
            xd = x.to(dtype)
            # bce in float32 whatever the logits' dtype (bf16 logits were a bf16 computation: 4e-4 off)
            assert create_loss("bce")(xd, y).item() == pytest.approx(
                F.binary_cross_entropy_with_logits(xd.float(), y).item(), rel=1e-6)
            for gamma, alpha in ((2, 0.25), (0.5, 0.75), (1, -1)):  # torchvision's alpha convention and mean
                ours = create_loss(f"focal:gamma={gamma},alpha={alpha}")(xd, y)
                assert ours.item() == pytest.approx(sigmoid_focal_loss(xd.float(), y, alpha=alpha, gamma=gamma,
                                                                       reduction="mean").item(), rel=1e-5, abs=1e-7)
        x64 = x.double()
        for gn, gp, clip in ((4, 0, 0.05), (2, 0.5, 0.0), (0.5, 1, 0.2)):
            ours = create_loss(f"asl:gamma_neg={gn},gamma_pos={gp},clip={clip}")(x64, y.double())
            p, pm = torch.sigmoid(x64), (torch.sigmoid(x64) - clip).clamp(min=0)
            log_not_p = F.logsigmoid(-x64) if clip == 0 else torch.log1p(-pm)
            exact = -(y * (1 - p) ** gp * F.logsigmoid(x64) + (1 - y) * pm ** gn * log_not_p).mean()
            assert ours.item() == pytest.approx(exact.item(), rel=1e-12, abs=1e-300)
            if x.abs().max() < 18:  # the paper's code caps log at log(1e-8) = -18.4, nothing else differs
                assert ours.item() == pytest.approx(_asl_paper_code(x64, y.double(), gn, gp, clip).item(), rel=1e-9)
    # 0 < gamma < 1 at saturated logits: pow's 0 * inf gave NaN gradients (torchvision's focal too)
    for spec in ("focal:gamma=0.5", "asl:gamma_pos=0.5", "asl:gamma_neg=0.5,clip=0", "focal", "asl"):
        for dtype in (torch.float32, torch.bfloat16):
            x = extreme.clone().to(dtype).requires_grad_()
            create_loss(spec)(x, cases[-1][1]).backward()
            assert x.grad is not None and torch.isfinite(x.grad.float()).all(), (spec, dtype, x.grad)
    # float64 stays float64, so autograd.gradcheck checks the analytic gradients
    x64, y64 = logits[:2, :4].double().requires_grad_(), target[:2, :4].double()
    for spec in ("focal:gamma=0.5", "asl:gamma_neg=2,gamma_pos=0.5,clip=0"):
        loss = create_loss(spec)
        assert torch.autograd.gradcheck(lambda a, loss=loss: loss(a, y64), (x64,)), spec


def test_parse_fills_defaults_and_records_every_parameter() -> None:
    assert parse_loss("bce").as_dict() == {"name": "bce"}
    assert parse_loss("focal").as_dict() == {"name": "focal", "gamma": 2.0, "alpha": 0.25}
    assert parse_loss(" ASL : clip=0 , gamma_neg=2").as_dict() == {"name": "asl", "gamma_neg": 2.0, "gamma_pos": 0.0,
                                                                 "clip": 0.0}
    recorded = parse_loss("focal:gamma=1.5").as_dict()
    assert isinstance(create_loss(recorded), FocalLoss) and create_loss(recorded).gamma == 1.5


@pytest.mark.parametrize(("text", "message"), [
    ("ce", "refused: BigEarthNet is multi-label"),
    ("cross-entropy", "refused"),
    ("hinge", "unknown --loss 'hinge': choose one of bce, focal, asl"),
    ("focal:beta=1", "focal has no parameter 'beta' (its parameters: gamma, alpha)"),
    ("bce:gamma=1", "bce has no parameter 'gamma' (its parameters: none)"),
    ("focal:gamma=two", "gamma needs a number"),
    ("focal:gamma", "gamma needs a number"),
    ("focal:gamma=nan", "gamma needs a number"),
    ("focal:gamma=-1", "gamma must be >= 0"),
    ("focal:alpha=2", "alpha must be in [0, 1]"),
    ("asl:clip=1", "clip must be in [0, 1)"),
    ("focal:gamma=2,gamma=3", "--loss focal:gamma=2,gamma=3: gamma is given twice"),  # trained with gamma 3
])
def test_bad_loss_specs_are_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_loss(text)


def test_a_run_records_its_loss_and_evaluate_scores_with_it(tmp_path: Path, synth_store_64: Path) -> None:
    store = copy_tree(synth_store_64, tmp_path / "store.zarr")
    make_split(open_store(store, mode="r+"), "strat", "iterative", fractions=(0.6, 0.2, 0.2), seed=0)
    cfg = TrainConfig(store=str(store), split="strat", model="shortcnn-rgb", epochs=1, batch_size=8, max_steps=3,
                      device="cpu", loss="asl:gamma_pos=1", out=str(tmp_path / "run"))
    train(cfg)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["loss"] == {"name": "asl", "gamma_neg": 4.0, "gamma_pos": 1.0, "clip": 0.05}
    assert config["settings"]["loss"] == "asl:gamma_pos=1"
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    result = evaluate_run(tmp_path / "run", out_dir=tmp_path / "eval")
    assert result.metrics["loss"] == recorded["loss"]  # the run's ASL, not BCE

    changed = subprocess.run([*CLI, "train", str(store), "--split", "strat", "--model", "shortcnn-rgb", "--device", "cpu",
                              "--batch-size", "8", "--loss", "focal", "--resume", "--out", str(tmp_path / "run"), "--quiet"],
                             capture_output=True, text=True)
    assert changed.returncode == 1
    assert changed.stderr.count("\n") == 1 and "loss: 'asl:gamma_pos=1' -> 'focal'" in changed.stderr
