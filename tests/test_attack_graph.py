"""The attack-time graph (BatchNorm folded into convolutions): exact where used, the original model where not."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_uatt.attacks import Attack, Budget, build_attack
from robust_uatt.attacks.pgd import objective_loss
from robust_uatt.data.datasets import Split, to_float
from robust_uatt.evaluation.attack_graph import attack_graph, fold_batchnorm
from robust_uatt.evaluation.harness import run_suite, summarize
from robust_uatt.models.vgg import VGG16
from robust_uatt.models.zoo import create_model, load_recipe


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm statistics and affine parameters far from the identity, as training leaves them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def _images(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(0)
    value = F.cross_entropy(model(xg), y, reduction="sum") if loss == "ce" else objective_loss(model, xg, y)[0]
    return torch.autograd.grad(value, xg)[0]


def _assert_same_function(original: nn.Module, folded: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          loss: str = "ce") -> None:
    with torch.no_grad():
        ref = original(x)
        torch.testing.assert_close(folded(x), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    g_ref, g_fold = _input_grad(original, x, y, loss), _input_grad(folded, x, y, loss)
    assert g_ref.abs().max() > 0
    torch.testing.assert_close(g_fold, g_ref, rtol=0, atol=1e-4 * float(g_ref.abs().max()))


def test_vgg16_folds_every_conv_bn_pair_and_keeps_logits_and_input_gradients() -> None:
    model = _trained_like(VGG16(width=0.125))
    x, y = _images()
    graph = attack_graph(model, x)
    assert graph.kind == "folded" and graph.folded == 13 and graph.reason == ""
    assert graph.max_abs_diff <= graph.tolerance and graph.checked_on == len(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in graph.module.modules())
    assert not any(p.requires_grad for p in graph.module.parameters())
    _assert_same_function(model, graph.module, x, y)
    # the original is left as it was: its BatchNorms and trainable parameters are still there
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("loss", ["ce", "eq14"])
def test_attention_model_folds_its_vgg_and_keeps_logits_and_input_gradients(loss: str) -> None:
    model = _trained_like(create_model(load_recipe("cifar10-vgg-attn", "smoke")))
    x, y = _images()
    graph = attack_graph(model, x)
    assert graph.kind == "folded" and graph.folded == 13  # the VGG's 13; the glimpse net's GroupNorm stays
    _assert_same_function(model, graph.module, x, y, loss)
    assert graph.module.backbone is not model.backbone


def test_glimpse_batchnorm_folds_too_and_a_sampled_policy_is_compared_under_one_seed() -> None:
    recipe = load_recipe("cifar10-vgg-attn", "smoke")
    recipe.model.update(glimpse_norm="batch")
    model = _trained_like(create_model(recipe))
    model.policy = "sample"
    x, _ = _images()
    state = torch.get_rng_state()
    graph = attack_graph(model, x)
    assert torch.equal(torch.get_rng_state(), state)  # the check leaves the caller's random stream alone
    assert graph.kind == "folded" and graph.folded == 13 + 3


class _ConvUsedTwice(nn.Module):
    """Calls its first conv by hand as well: the conv's raw output feeds two places, so folding is not exact."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x) + self.body[0](x)
        return self.head(h.mean((2, 3)))


def test_a_conv_whose_output_feeds_two_places_falls_back_to_the_original() -> None:
    model = _trained_like(_ConvUsedTwice())
    x, _ = _images()
    graph = attack_graph(model, x)
    assert graph.kind == "original" and graph.module is model
    assert graph.folded == 1 and graph.max_abs_diff > graph.tolerance
    assert "differ" in graph.reason and graph.describe()["graph"] == "original"


def test_a_batchnorm_in_train_mode_is_not_folded() -> None:
    model = _trained_like(VGG16(width=0.125))
    model.features[1].train()  # batch statistics: not a fixed affine map
    x, y = _images()
    folded, pairs, skipped, _ = fold_batchnorm(model)
    assert (pairs, skipped) == (12, 1) and folded.features[1].training
    graph = attack_graph(model, x)
    assert graph.kind == "folded" and graph.skipped == 1
    _assert_same_function(model, graph.module, x, y)
    single = _ConvUsedTwice().eval()
    single.body[1].train()
    graph = attack_graph(single, x)
    assert graph.kind == "original" and graph.module is single and "in eval mode" in graph.reason


class _Uncopyable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
        self.lock = threading.Lock()  # deepcopy cannot copy a lock


def test_models_without_pairs_or_that_cannot_be_copied_run_as_they_are() -> None:
    x, _ = _images()
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    graph = attack_graph(plain.eval(), x)
    assert graph.kind == "original" and graph.module is plain and graph.reason == "no Conv+BatchNorm pair to fold"
    odd = _Uncopyable().eval()
    graph = attack_graph(odd, x)
    assert graph.kind == "original" and graph.module is odd and "cannot copy" in graph.reason


# ---- in the harness: attacks run on the attack graph, verdicts come from the original model ---------------------

seen: list[nn.Module] = []  # the graphs _Sabotage was handed


class _Sabotage(Attack):
    """Returns the clean inputs after making the graph it was handed predict class 0 everywhere: if verdicts were
    taken on that graph, every point of another class would count as broken."""

    name = "sabotage"
    description = "test double"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        graph = getattr(model, "wrapped", model)
        seen.append(graph)
        with torch.no_grad():
            graph.classifier[-1].bias[0] = 1e6
        return x


def _split(model: nn.Module, n: int = 12) -> Split:
    """Random images labelled with the model's own predictions: every point is clean-correct."""
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    with torch.no_grad():
        y = model(to_float(x)).argmax(1)
    return Split(x, y, "synthetic")


def test_harness_attacks_the_folded_graph_judges_on_the_original_and_records_the_graph() -> None:
    torch.manual_seed(0)
    model = _trained_like(VGG16(width=0.125))
    data = _split(model)
    assert (data.y != 0).sum() >= 3  # points the sabotaged graph would misclassify
    seen.clear()
    outcome = run_suite(model, [_Sabotage(Budget(eps=8 / 255, alpha=2 / 255, steps=1))], data, batch_size=6,
                        device=torch.device("cpu"))
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0] is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in seen[0].modules())
    assert outcome.records[0].broken == []  # the original still predicts as before: nothing was broken
    assert float(model.classifier[-1].bias[0].detach()) < 1e6
    summary = summarize(outcome)
    assert summary["attack_graph"]["graph"] == "folded" and summary["attack_graph"]["folded_conv_bn"] == 13
    assert summary["attack_graph"]["max_abs_diff"] <= summary["attack_graph"]["tolerance"]
    pgd = build_attack("pgd-ce", eps=8 / 255, steps=2)
    odd = _trained_like(_ConvUsedTwice())
    fallback = run_suite(odd, [pgd], _split(odd), batch_size=6, device=torch.device("cpu"))
    assert fallback.graph["graph"] == "original" and "differ" in fallback.graph["reason"]
