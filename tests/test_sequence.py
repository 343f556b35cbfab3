"""Sequence models of Table 3: shapes and the 18-glimpse schedule, the sequence objective, the context weights,
attack switches, recipes wiring the label length, and learning a 2-digit toy problem."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robust_uatt.data.multidigit import IGNORE, TERMINAL, make_multidigit
from robust_uatt.models.outputs import correct
from robust_uatt.models.sequence import STAT_KEYS, build_cnn_seq, build_uatt_seq
from robust_uatt.models.zoo import Recipe, create_model, load_recipe
from robust_uatt.utils.errors import UserError

TINY = dict(conv_channels=(4, 4, 8), glimpse_dim=16, hidden=16, context_hidden=16, td_feat_dim=8)


def labels(batch: int = 4) -> torch.Tensor:
    rows = [[1, 2, TERMINAL] + [IGNORE] * 3, [7, TERMINAL] + [IGNORE] * 4, [3, 1, 4, 1, 5, TERMINAL],
            [0, 0, 0, TERMINAL, IGNORE, IGNORE]]
    return torch.tensor(rows * (batch // 4))


def test_eighteen_glimpses_and_logit_layout() -> None:
    torch.manual_seed(0)
    model = build_uatt_seq(num_classes=11, in_channels=1, image_size=54, **TINY).eval()
    x = torch.rand(4, 1, 54, 54)
    r = model.rollout(x, labels())
    assert model.glimpses == 18 and r.step_logits.shape == (18, 4, 11) and r.locations.shape == (18, 4, 2)
    assert r.logits.shape == (4, 11, 6) and model(x).shape == (4, 11, 6)
    assert torch.equal(r.logits[:, :, 1], r.step_logits[5])  # label s is read after glimpses 3s..3s+2
    assert r.log_probs.shape == (17, 4) and r.context_logits.shape == (4, 11, 6)
    assert torch.equal(model(x), model(x))  # deterministic in eval with the mean policy


def test_objective_terms_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_uatt_seq(num_classes=11, in_channels=1, image_size=54, **TINY).train()
    x = torch.rand(8, 1, 54, 54).requires_grad_(True)
    y = labels(8)
    loss, terms, logits = model.objective(x, y)
    assert set(terms) == set(STAT_KEYS) and torch.isfinite(loss) and logits.shape == (8, 11, 6)
    expected = F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum") / 8
    assert torch.allclose(terms["loss_cls"], expected)
    assert float(terms["reward_mean"]) == float(correct(logits, y).float().mean())
    assert float(terms["loss_q"]) > 0 and float(terms["loss_context"]) > 0
    loss.backward()
    for part in (model.glimpse_net, model.core, model.classifier, model.context_head, model.location_policy,
                 model.baseline, model.top_down.q_net):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sequences"):
        model.objective(x, y[:, :4])


def test_context_weights_carry_no_label_scale() -> None:
    """One glimpse per label: the normalized weights are 1, so C_s = H_t whatever the label (no label leak)."""
    torch.manual_seed(0)
    model = build_uatt_seq(num_classes=11, in_channels=1, image_size=28, positions=3, glimpses_per_label=1,
                           **TINY).eval()
    x = torch.rand(2, 1, 28, 28)
    a = model.rollout(x, torch.tensor([[1, 2, TERMINAL], [3, TERMINAL, IGNORE]]))
    b = model.rollout(x, torch.tensor([[9, 8, TERMINAL], [5, 6, TERMINAL]]))
    assert torch.allclose(a.context_logits, b.context_logits)
    assert torch.allclose(a.context_logits, model.context_head(a.hidden).permute(1, 2, 0))


def test_attack_mode_switches_and_restores() -> None:
    model = build_uatt_seq(num_classes=11, in_channels=1, image_size=28, positions=3, **TINY).eval()
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    with model.attack_mode(grad_path="vgg", forced_action=2):
        assert model.top_down.forced_action == 2
        # no VGG features here: the paper's gradient path does not exist, x gets no gradient
        assert torch.autograd.grad(model(x).sum(), x, allow_unused=True)[0] is None
    assert model.grad_path == "full" and model.top_down.forced_action is None
    with model.attack_mode(bpda_tau=0.1):
        grad = torch.autograd.grad(model(x).sum(), x)[0]
    assert grad.abs().sum() > 0 and model.bpda_tau is None
    with pytest.raises(ValueError, match="grad_path"):
        with model.attack_mode(grad_path="nope"):
            pass


def test_recipes_take_the_label_length_from_the_data() -> None:
    recipe = load_recipe("multidigit-mnist-uatt", "smoke")
    assert create_model(recipe).positions == 6 and create_model(recipe).glimpses == 18
    short = Recipe.from_dict({**recipe.to_dict(), "data": {**recipe.data, "max_digits": 2}})
    assert create_model(short).positions == 3
    assert create_model(load_recipe("multidigit-mnist-cnn", "smoke"))(torch.rand(2, 1, 54, 54)).shape == (2, 11, 6)
    full = create_model(load_recipe("multidigit-mnist-uatt"))
    assert [m.out_channels for m in full.glimpse_net.convs if isinstance(m, torch.nn.Conv2d)] == [64, 64, 128]
    assert [m.kernel_size for m in full.glimpse_net.convs if isinstance(m, torch.nn.Conv2d)] == [(5, 5), (3, 3),
                                                                                               (3, 3)]
    assert full.core.hidden == 512 and len(full.core.cells) == 2 and full.sensor.patch == 12 and full.sensor.scales == 2
    with pytest.raises(UserError, match="predicts one class"):
        Recipe.from_dict({**recipe.to_dict(), "model": {"arch": "cnn"}})
    with pytest.raises(UserError, match="predicts digit sequences"):
        Recipe.from_dict({**recipe.to_dict(), "dataset": "mnist"})


def toy_problem(classes: int = 4) -> tuple[torch.Tensor, ...]:
    """2-digit numbers of ``classes`` shape-coded digits (2x2 block patterns) on 24x24 canvases cut to 20x20."""
    codes = torch.tensor([[int(b) for b in f"{k:04b}"] for k in (1, 2, 4, 8, 3, 5, 6, 9, 10, 12)[:classes]])
    digit_labels = torch.arange(classes).repeat(3)
    digits = torch.zeros(len(digit_labels), 28, 28, dtype=torch.uint8)
    blocks = codes.view(classes, 2, 2)[digit_labels].repeat_interleave(8, 1).repeat_interleave(8, 2)
    digits[:, 6:22, 6:22] = (blocks * 255).to(torch.uint8)
    common = dict(canvas=24, crop=20, min_digits=2, max_digits=2)
    xtr, ytr = make_multidigit(digits, digit_labels, n=2048, seed=0, **common)
    xte, yte = make_multidigit(digits, digit_labels, n=256, seed=1, train=False, **common)
    return xtr[:, None].float() / 255, ytr, xte[:, None].float() / 255, yte


def fit(model: torch.nn.Module, data: tuple[torch.Tensor, ...], steps: int, lr: float) -> float:
    """Adam on the model's objective (plain CE for the CNN); whole-sequence test accuracy."""
    xtr, ytr, xte, yte = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(xtr), (32,), generator=gen)
        if hasattr(model, "objective"):
            loss = model.objective(xtr[i], ytr[i])[0]
        else:
            loss = F.cross_entropy(model(xtr[i]), ytr[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(correct(model(xte), yte).float().mean())


def test_sequence_attention_model_learns_a_two_digit_toy_problem() -> None:
    """Whole-sequence accuracy well above chance (1/16 for two digits of 4 classes) within 150 steps.

    Deterministic glimpses (eval mode: centre start, policy mean) isolate what this test is about -- the glimpse
    network, LSTM core, label schedule, sequence objective and decoding learning together; with Gaussian exploration
    the same model needs far more steps before the policy finds the digits (RAM-style training is slow), and
    exploration is covered by the single-label model's tests.
    """
    torch.manual_seed(0)
    data = toy_problem()
    model = build_uatt_seq(num_classes=11, in_channels=1, image_size=20, positions=3, glimpses_per_label=1,
                           patch=20, scales=1, conv_channels=(16, 16, 32), glimpse_dim=128, hidden=128,
                           lstm_layers=1, context_hidden=32, top_down=False).eval()
    assert fit(model, data, steps=150, lr=3e-3) >= 0.15


def test_sequence_cnn_learns_the_toy_problem() -> None:
    torch.manual_seed(0)
    model = build_cnn_seq(num_classes=11, in_channels=1, image_size=20, positions=3, channels=(16, 32), hidden=64)
    assert fit(model, toy_problem(), steps=150, lr=3e-3) >= 0.3
