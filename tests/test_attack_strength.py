"""Attack strength (issue 9, items 6 and 7): best iterate, early-stop margin, exact judgement, region-enum judged
on the deployed model, targeted and margin losses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn

from robust_uatt.attacks import build_attack
from robust_uatt.attacks.pgd import STOP_MARGIN, logit_margin, stop_threshold
from robust_uatt.data.datasets import Split
from robust_uatt.evaluation.harness import frozen_parameters, run_suite, summarize
from robust_uatt.evaluation.selftest import fit_small_cnn
from tests.conftest import synthetic_images

CPU = torch.device("cpu")
START = 128  # uint8 grey: every pixel 128/255 = 0.502


def _grey(n: int = 4) -> Split:
    return Split(torch.full((n, 3, 8, 8), START, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), "grey")


def _straight_through(value: Tensor, s: Tensor, slope: float = 1.0) -> Tensor:
    """``value`` forward, the gradient of ``slope * s`` backward."""
    return slope * s + (value - slope * s).detach()


class Window(nn.Module):
    """Label 0 loses (by a margin of 2 logits) only while the mean pixel lies in (0.52, 0.57); the gradient always
    says "brighter", so PGD walks into the window and out of it again: its last iterate is not adversarial."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).mean(1)
        z1 = _straight_through(torch.where((s > 0.52) & (s < 0.57), 2.0, -2.0), s)
        return torch.stack([torch.zeros_like(z1), z1], 1)


class Brighter(nn.Module):
    """A transfer source whose loss always rises with brightness (it never predicts the label itself)."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).mean(1)
        return torch.stack([-s, s], 1)


def _run(model: nn.Module, name: str, data: Split, **kw) -> dict:
    attack = build_attack(name, eps=0.1, alpha=0.03, steps=5, seed=0, **kw)
    return summarize(run_suite(model, [attack], data, batch_size=len(data), device=CPU))


@pytest.mark.parametrize("name, kw", [("pgd-eq14", {"options": {"random_start": False}}),
                                      ("pgd-ce", {"eot": 2, "options": {"random_start": False}}),
                                      ("transfer", {"options": {"source_model": Brighter()}})])
def test_runs_without_early_stop_keep_their_best_iterate(name: str, kw: dict) -> None:
    """pgd-eq14 (no early stop), any EOT run and transfer once returned the last iterate (mean 0.6, outside the
    window): robust 100%. The best iterate (0.532, inside) breaks every point."""
    res = _run(Window(), name, _grey(), **kw)
    assert res["clean_accuracy"] == 1.0
    assert res["robust_accuracy"] == 0.0


def test_last_iterate_is_still_available_for_the_torchattacks_equivalence() -> None:
    from robust_uatt.attacks.pgd import pgd

    x = torch.full((2, 3, 8, 8), START / 255)
    y = torch.zeros(2, dtype=torch.long)
    last = pgd(Window(), x, y, eps=0.1, alpha=0.03, steps=5, early_stop=False, keep="last")
    best = pgd(Window(), x, y, eps=0.1, alpha=0.03, steps=5, early_stop=False)
    assert torch.allclose(last.mean((1, 2, 3)), x.mean((1, 2, 3)) + 0.1, atol=1e-6)
    assert torch.allclose(best.mean((1, 2, 3)), x.mean((1, 2, 3)) + 0.03, atol=1e-6)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Split]:
    torch.manual_seed(0)
    x, y = synthetic_images(300, 32, 3, seed=5)
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return fit_small_cnn(xs, torch.from_numpy(y), channels=8, steps=150), Split(xs[:48], torch.from_numpy(y)[:48],
                                                                                   "synthetic")


def test_early_stopped_points_keep_a_margin(trained) -> None:
    """Early stop once froze a point at its first misclassified iterate, a hair past the boundary (median margin
    ~0.02 logits), where a TF32 or differently-batched judgement flips it back. Now a point stops only past the
    stop margin. (A point the attack stopped on is the one whose result no longer depends on the step count.)"""
    from robust_uatt.attacks.pgd import pgd

    model, data = trained
    x, y = data.x.float() / 255, data.y
    with frozen_parameters(model):
        short, long = (pgd(model, x, y, eps=0.2, alpha=0.025, steps=steps) for steps in (20, 40))
        logits = model(short)
    stopped = (short == long).flatten(1).all(1) & (logit_margin(logits, y) > 0)
    assert stopped.sum() >= len(y) // 2
    margin, need = logit_margin(logits, y)[stopped], stop_threshold(logits, STOP_MARGIN)[stopped]
    assert bool((margin > need).all()), (margin - need).min()


@pytest.fixture
def tf32_on():
    """TF32 allowed, as ``runtime.configure`` sets it on CUDA; the previous flags restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_judgement_runs_without_tf32(trained, tf32_on) -> None:
    """The harness judges clean and adversarial inputs in exact float32, whatever the attack ran under."""
    model, data = trained
    seen: list[tuple[bool, bool, bool]] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: Tensor) -> Tensor:
            seen.append((torch.is_grad_enabled(), torch.backends.cuda.matmul.allow_tf32,
                         torch.backends.cudnn.allow_tf32))
            return self.inner(x)

    run_suite(Spy(), [build_attack("fgsm", eps=8 / 255, seed=0)], data.subset(slice(0, 8)), batch_size=8,
              device=CPU)
    judged = [flags for flags in seen if not flags[0]]  # the harness's passes: no autograd
    attacked = [flags for flags in seen if flags[0]]
    assert len(judged) == 2 and attacked  # the clean pass and the judgement of the one batch
    assert all(not tf32 and not conv for _, tf32, conv in judged)
    assert all(tf32 and conv for _, tf32, conv in attacked)  # the attack itself keeps its speed settings
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored


class _TopDown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.forced_action: int | None = None


class Regions(nn.Module):
    """Label 0. The model picks region 1 itself only once the mean pixel exceeds 0.55; with region 1 forced it
    loses from mean 0.52 on. Regions 0, 2, 3 never lose and their gradient says "darker"."""

    def __init__(self) -> None:
        super().__init__()
        self.top_down = _TopDown()

    @contextmanager
    def attack_mode(self, *, grad_path=None, bpda_tau=None, forced_action: int | None = None) -> Iterator[None]:
        """As the attention model's: force the region for the duration; None leaves it as it is."""
        saved = self.top_down.forced_action
        if forced_action is not None:
            self.top_down.forced_action = forced_action
        try:
            yield
        finally:
            self.top_down.forced_action = saved

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).mean(1)
        forced = self.top_down.forced_action
        region1 = s > 0.55 if forced is None else torch.full_like(s, forced == 1, dtype=torch.bool)
        z1 = torch.where(region1, _straight_through(torch.where(s > 0.52, 2.0, -2.0), s),
                         _straight_through(torch.full_like(s, -2.0), s, slope=-1.0))
        return torch.stack([torch.zeros_like(z1), z1], 1)


def test_region_enum_judges_success_on_the_deployed_model() -> None:
    """Forced region 1 is fooled at mean 0.522 and early stop used to freeze the point there; the deployed model
    (region 0 at that brightness) is not fooled, so the point counted robust. Judged on the deployed model, the
    attack walks on to 0.542+ where the model picks region 1 itself and loses."""
    res = _run(Regions(), "region-enum", _grey(), options={"random_start": False})
    assert res["clean_accuracy"] == 1.0
    assert res["robust_accuracy"] == 0.0


# ------------------------------------------------------------------------------ item 7: targeted and margin losses
class Saturated(nn.Module):
    """The trained net with its logits times 1e4: softmax rounds to one-hot, so cross-entropy has an exactly zero
    input gradient on every confidently classified point, while the logit margin keeps its gradient."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return 1e4 * self.inner(x)


def _robust(model: nn.Module, data: Split, name: str, **kw) -> dict:
    attack = build_attack(name, eps=0.2, steps=10, seed=0, **kw)
    return summarize(run_suite(model, [attack], data, batch_size=len(data), device=CPU))


@pytest.mark.parametrize("loss", ["cw", "dlr"])
def test_margin_losses_break_what_saturated_cross_entropy_cannot(trained, loss: str) -> None:
    model, data = trained
    saturated = Saturated(model).eval()
    ce = _robust(saturated, data, "pgd-ce", options={"random_start": False})
    margin = _robust(saturated, data, "pgd-ce", options={"random_start": False, "loss": loss})
    unscaled = _robust(model, data, "pgd-ce", options={"random_start": False, "loss": loss})
    assert ce["robust_accuracy"] == ce["clean_accuracy"]  # CE: no gradient, nothing breaks
    assert margin["robust_accuracy"] == pytest.approx(unscaled["robust_accuracy"], abs=1 / 48)  # scale-blind
    assert margin["robust_accuracy"] < ce["robust_accuracy"] - 0.3


def test_unknown_loss_is_a_user_error() -> None:
    from robust_uatt.utils.errors import UserError

    with pytest.raises(UserError, match="did you mean cw"):
        build_attack("pgd-ce", eps=0.1, options={"loss": "cv"})
    with pytest.raises(UserError):  # the paper's attack has its own loss (Eq. 14)
        build_attack("pgd-eq14", eps=0.1, options={"loss": "cw"})


@pytest.mark.parametrize("implementation", ["reference", "torchattacks"])
@pytest.mark.parametrize("name", ["apgd-t", "fab-t"])
def test_targeted_attacks_break_points_within_the_ball(trained, name: str, implementation: str) -> None:
    if implementation == "reference":
        pytest.importorskip("pyautoattack")
    model, data = trained
    small = data.subset(slice(0, 16))
    attack = build_attack(name, eps=0.2, steps=10, seed=0, options={"implementation": implementation})
    out = run_suite(model, [attack], small, batch_size=16, device=CPU)
    res = summarize(out)
    assert not out.records[0].violations and out.records[0].max_linf <= 0.2 + 1e-6
    assert res["robust_accuracy"] <= res["clean_accuracy"] / 2
    assert res["attacks"][0]["implementation"].startswith("reference" if implementation == "reference" else "torch")


def test_the_adaptive_suite_has_targeted_margin_and_long_square() -> None:
    from robust_uatt.evaluation.suites import load_suite

    entries = {(e.name, e.options.get("loss")): e for e in load_suite("adaptive").entries}
    assert {("apgd-t", None), ("fab-t", None), ("pgd-ce", "cw")} <= set(entries)
    assert entries[("square", None)].steps == 5000


def _cheap_copy(name: str, folder) -> str:
    """The shipped suite ``name`` with every budget cut to 4 steps (Square to 50 queries), as a suite file."""
    import re

    from robust_uatt.utils.resources import find_toml

    text = re.sub(r"(?m)^steps = \d+", "steps = 4", find_toml(name, "robust_uatt.suites", "attacks", "suite").read_text())
    text = text.replace('name = "autoattack"', 'name = "autoattack"\noptions = { square_queries = 50 }')
    path = folder / f"{name}-cheap.toml"
    path.write_text(text)
    return str(path)


def test_the_defended_suite_starts_with_exactly_the_standard_suite(trained, tmp_path) -> None:
    """`defended` runs the reference AutoAttack first on every clean-correct point, so its first stage is the
    `standard` suite's number (same points, same per-batch seeds); the paper's protocol still sees every point, and
    the worst case over the later attacks can only be lower. `compare` reports AutoAttack alone beside it."""
    pytest.importorskip("pyautoattack")
    from robust_uatt.api import evaluate
    from robust_uatt.benchmark.compare import parse_result
    from robust_uatt.evaluation.suites import load_suite

    entries = load_suite("defended").entries
    assert entries[0].name == "autoattack" and entries[0].steps == load_suite("standard").entries[0].steps
    assert {"pgd-eq14", "pgd-bpda", "region-enum", "apgd-dlr", "noise"} <= {e.name for e in entries}
    assert not {"apgd-ce", "apgd-t", "fab-t", "square"} & {e.name for e in entries}  # AutoAttack ran those
    model, data = trained
    kw = dict(eps=0.16, checks="none", batch_size=24, device="cpu")
    standard = evaluate(model, data.x[:24], data.y[:24], suite=_cheap_copy("standard", tmp_path), **kw)
    defended = evaluate(model, data.x[:24], data.y[:24], suite=_cheap_copy("defended", tmp_path), **kw)
    first = defended.attacks[0]
    assert first["name"] == "autoattack" and first["implementation"].startswith("reference")
    assert first["attacked"] == standard.attacks[0]["attacked"]
    assert first["robust_accuracy_after"] == standard.robust_accuracy
    assert 0 < standard.robust_accuracy < standard.clean_accuracy  # a test that can tell the two stages apart
    assert defended.robust_accuracy <= standard.robust_accuracy
    assert defended.paper_protocol_accuracy is not None
    ours = parse_result(defended.to_json(), "d/results.json")
    assert ours.autoattack == "reference" and ours.autoattack_alone == standard.robust_accuracy
    assert ours.more_attacks == len(entries) - 1 == len(defended.attacks) - 1
    assert any("AutoAttack alone" in c for c in ours.robustbench_caveats())
