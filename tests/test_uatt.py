"""The unified attention model: gradients, learning, determinism, the Eq. 14 sign, VGG fusion, ablation switches."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import torch

from robust_uatt.models.bottom_up import gaussian_log_prob
from robust_uatt.models.uatt import STAT_KEYS, Rollout, build_uatt, eq14_loss

TINY = dict(glimpses=3, patch=4, hidden=32, glimpse_hidden=16, glimpse_dim=32, context_hidden=16)


def tiny(**overrides: object):  # noqa: ANN201
    options = dict(num_classes=5, in_channels=3, image_size=16, **TINY)
    options.update(overrides)
    return build_uatt(**options)


def batch(n: int = 4, classes: int = 5, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen), torch.randint(0, classes, (n,), generator=gen)


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from 2 threads, and OpenMP barriers crawl when the shared cores are busy (the
    learning test took 3 s idle, 25 s under load). Module autouse fixtures run after conftest's; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bright_square_task(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """1-channel 16x16 images; class 0 = a 5x5 bright square in the left half, class 1 = in the right half."""
    y = torch.randint(0, 2, (n,), generator=gen)
    top = torch.randint(0, 12, (n, 1, 1), generator=gen)
    left = (torch.randint(0, 4, (n,), generator=gen) + 8 * y).view(n, 1, 1)
    rows, cols = torch.arange(16).view(1, 16, 1), torch.arange(16).view(1, 1, 16)
    inside = (rows >= top) & (rows < top + 5) & (cols >= left) & (cols < left + 5)
    return inside.float().unsqueeze(1), y


GRAD_CONFIGS = {
    "fc-rnn": {},
    "conv-lstm-2scales": dict(glimpse_net="conv", core="lstm", scales=2, conv_channels=(4, 4, 8)),
    "top-down": dict(top_down=True),
    "vgg-classifier-fusion": dict(backbone="vgg16", vgg_width=0.0625, image_size=32),
    "vgg-rnn-fusion": dict(backbone="vgg16", vgg_width=0.0625, image_size=32, fusion="rnn"),
}


@pytest.mark.parametrize("name", list(GRAD_CONFIGS))
def test_every_parameter_gets_a_finite_gradient_from_eq14_plus_q_loss(name: str) -> None:
    overrides = GRAD_CONFIGS[name]
    torch.manual_seed(0)
    model = tiny(**overrides).train()
    x, y = batch(size=int(overrides.get("image_size", 16)))
    loss, terms, logits = model.objective(x, y)
    assert set(terms) == set(STAT_KEYS) and all(v.dim() == 0 and not v.requires_grad for v in terms.values())
    assert logits.shape == (x.shape[0], model.num_classes)
    loss.backward()
    bad = [n for n, p in model.named_parameters()
           if p.requires_grad and (p.grad is None or not p.grad.isfinite().all())]
    assert not bad, f"parameters without a finite gradient: {bad}"
    if overrides.get("top_down"):
        assert terms["loss_q"] > 0.0


def test_bottom_up_model_learns_left_vs_right_bright_square() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_uatt(num_classes=2, in_channels=1, image_size=16, glimpses=3, patch=4, scales=3, hidden=64,
                       glimpse_hidden=32, glimpse_dim=64, context_hidden=32)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        x, y = bright_square_task(64, gen)
        loss, _, _ = model.objective(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_optimizer_step()
    model.eval()
    x, y = bright_square_task(512, gen)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.parametrize("top_down", [False, True])
def test_mean_policy_is_deterministic_and_sample_policy_is_not(top_down: bool) -> None:
    torch.manual_seed(0)
    model = tiny(top_down=top_down).eval()
    x, _ = batch()
    with torch.no_grad():
        first = model(x)
        assert first.shape == (4, 5)
        for _ in range(4):
            assert torch.equal(model(x), first)
        model.policy = "sample"
        assert not torch.equal(model(x), model(x))
        model.policy = "mean"
        assert torch.equal(model(x), first)
    with pytest.raises(ValueError):
        model.policy = "greedy"


def test_sampled_locations_stay_inside_the_image_and_trace_reports_them() -> None:
    model = tiny(glimpses=5, sigma=2.0, scales=2).train()  # huge sigma: clamping must kick in
    x, _ = batch()
    trace = model.trace(x)
    assert trace["locations"].shape == (5, 4, 2)
    assert trace["locations"].abs().max() <= 1.0
    assert trace["patch_sizes"] == pytest.approx([2 * 4 / 16, 2 * 8 / 16])
    assert trace["box"] is None
    assert tiny(top_down=True).eval().trace(x)["box"].shape == (4, 4)


def _reinforce_only_rollout(mean: torch.Tensor, action: torch.Tensor, correct: bool, baseline: float) -> Rollout:
    """One policy decision (T = 2, B = 1) whose only differentiable quantity is log pi(action | mean)."""
    logits = torch.tensor([[[0.0, 0.0]], [[5.0, 0.0]] if correct else [[0.0, 5.0]]])  # y = 0
    return Rollout(
        logits=logits,
        hidden=torch.zeros(2, 1, 3),
        locations=torch.zeros(2, 1, 2),
        entropies=torch.tensor([[0.0], [0.5]]),
        log_probs=gaussian_log_prob(action, mean, 0.15).view(1, 1),
        baselines=torch.tensor([[baseline]]),
    )


@pytest.mark.parametrize("correct", [True, False])
def test_reinforce_sign_descent_raises_log_prob_of_actions_that_beat_the_baseline(correct: bool) -> None:
    mean = torch.zeros(1, 2, requires_grad=True)
    action = torch.tensor([[0.1, -0.05]])
    y = torch.tensor([0])
    rollout = _reinforce_only_rollout(mean, action, correct, baseline=0.3)
    total, terms = eq14_loss(rollout, y, beta1=0.0, beta2=1.0, lam=0.5, use_context=False)
    advantage = (1.0 if correct else 0.0) - 0.3
    weight = 0.5 + 0.5  # entropy of the patch the action led to + lambda
    before = gaussian_log_prob(action, mean, 0.15).item()
    assert terms["reinforce"].item() == pytest.approx(-before * weight * advantage)
    total.backward()
    with torch.no_grad():
        mean -= 1e-3 * mean.grad
    after = gaussian_log_prob(action, mean, 0.15).item()
    assert (after > before) if correct else (after < before)


@pytest.mark.parametrize("fusion", ["classifier", "rnn"])
def test_vgg16_backbone_fusions_give_logits_and_input_gradients_in_eval(fusion: str) -> None:
    torch.manual_seed(0)
    model = tiny(backbone="vgg16", vgg_width=0.0625, image_size=32, fusion=fusion, core="lstm").eval()
    x, y = batch(size=32)
    x.requires_grad_(True)
    logits = model(x)
    assert logits.shape == (4, 5)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    x.grad = None
    loss, _, _ = model.objective(x, y)  # the attack loss (Eq. 14) in eval mode
    loss.backward()
    assert x.grad.abs().sum() > 0 and x.grad.isfinite().all()


@pytest.mark.parametrize(
    ("overrides", "zero_keys"),
    [
        (dict(entropy=False), []),
        (dict(context=False), ["loss_context"]),
        (dict(location_control="random"), ["loss_reinforce", "loss_baseline"]),
        (dict(location_control="center", context=False), ["loss_reinforce", "loss_baseline", "loss_context"]),
        ({}, []),
    ],
)
def test_ablation_switches_run_and_report_zero_for_switched_off_terms(overrides: dict, zero_keys: list[str]) -> None:
    torch.manual_seed(0)
    model = tiny(**overrides).train()
    x, y = batch()
    loss, stats, _ = model.objective(x, y)
    loss.backward()
    assert stats["loss_q"] == 0.0  # no top-down here
    for key in zero_keys:
        assert stats[key] == 0.0
    for key in {"loss_cls", "loss_context", "loss_baseline"} - set(zero_keys):
        assert stats[key] > 0.0
    if overrides.get("location_control") == "center":
        assert torch.count_nonzero(model.trace(x)["locations"]) == 0


def test_entropy_switch_changes_only_the_reinforce_weight() -> None:
    x, y = batch()
    stats = {}
    for entropy in (True, False):
        torch.manual_seed(0)
        model = tiny(entropy=entropy).train()
        torch.manual_seed(1)
        stats[entropy] = model.objective(x, y)[1]
    assert stats[True]["loss_cls"] == stats[False]["loss_cls"]
    assert stats[True]["loss_reinforce"] != stats[False]["loss_reinforce"]


def test_build_signature_is_keyword_only_with_defaults_and_rejects_unknown_choices() -> None:
    params = inspect.signature(build_uatt).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    required = {p.name for p in params if p.default is inspect.Parameter.empty}
    assert required == {"num_classes", "in_channels", "image_size"}
    for bad in (dict(core="gru"), dict(glimpse_net="mlp"), dict(location_control="left"), dict(fusion="sum")):
        with pytest.raises(ValueError):
            tiny(**bad)
