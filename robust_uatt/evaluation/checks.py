"""Sanity checks that decide whether a robust-accuracy number may be printed as valid.

A failed *gating* check marks the result INVALID (table, JSON, exit code 4) with its reason; other findings are
warnings in the report. They target the classic ways a defense looks robust without being so (Carlini et al. 2019,
Tramer et al. 2020): masked or shattered gradients, randomness, saturated softmax outputs, weak attack budgets.

Checks on the model (subset of clean-correct points, after the attacks): every submodule in eval mode; determinism
over 5 passes; logits, not probabilities; the share of points with an all-zero input gradient (and whether the
output has any autograd path to the input); the run's own attacks at eps = 0 return the input and the clean
prediction; PGD without random start in the whole [0,1] box reaches ~0% accuracy; PGD-CE at the run's eps raises
the loss on nearly every point. Checks on the run: every adversarial input stayed in the ball and the box; every
gradient attack ran; no attack left a submodule in train mode; black-box attacks (square, noise, transfer) never
break significantly more than 0.2 % of the points that every white-box attack missed (fails when the 95% interval
of that share lies wholly above 0.2 %); with ``level="full"`` also doubling the PGD steps
(and EOT samples) and adding a restart breaks < 1 % of the robust points tested, and accuracy is monotone in eps.
What each check catches and what it cannot: README, "The attack harness".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_uatt.attacks import Attack, build_attack
from robust_uatt.attacks.base import Budget, input_gradient
from robust_uatt.attacks.pgd import pgd
from robust_uatt.data.datasets import Split, to_float
from robust_uatt.evaluation.harness import SuiteOutcome, frozen_parameters
from robust_uatt.evaluation.predict import predict_labels
from robust_uatt.models.outputs import hits

SUBSET = 64  # points the model-level checks look at: enough to detect, cheap enough to always run
EPS_ZERO_POINTS = 16  # the run's attacks re-run at eps 0 on this many points
BLACK_BOX_MARGIN = 0.002  # 0.2 points: fails when the black-box-only share is significantly above it
STEPS_MARGIN = 0.01  # 1 point
ZERO_GRADIENT_LIMIT = 0.02  # share of points with an all-zero input gradient (1 of 64 passes, 2 fail)
EPS_ONE_LIMIT = 0.02  # accuracy left by PGD in the whole [0, 1] box: ~0
LOSS_RISE_SHARE = 0.9  # points whose CE must rise under PGD-CE-10
NO_PATH = "the model's output has no autograd path to its input (it detaches its input)"


@dataclass
class Check:
    name: str
    passed: bool | None  # None: not run (with the reason in detail)
    gating: bool
    detail: str
    seconds: float = 0.0  # what the check cost (model-level checks; 0 for checks that only read the run)

    def failed_gate(self) -> bool:
        return self.gating and self.passed is False


def _subset(data: Split, clean: torch.Tensor, device: torch.device,
            limit: int = SUBSET) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx = torch.nonzero(clean).flatten()[:limit]
    if len(idx) == 0:
        idx = torch.arange(min(limit, len(data)))
    return to_float(data.x[idx].to(device)), data.y[idx].to(device), idx


def check_model(model: nn.Module, data: Split, clean: torch.Tensor, *, num_classes: int, device: torch.device,
                seed: int, stochastic: bool, attacks: Sequence[Attack] = (), eps: float | None = None,
                eot: int = 1) -> list[Check]:
    """The model-level checks on up to SUBSET clean-correct points (after the run: what the attacks left).

    ``attacks``: the run's attacks, re-run at eps = 0 with small budgets; ``eps``: the run's radius, for the
    loss-trajectory check (the attack loss must rise)."""
    x, y, idx = _subset(data, clean, device)
    checks = [*timed(_eval_mode, model), *timed(_determinism, model, x, stochastic), *timed(_logits, model, x),
              *timed(_input_gradients, model, x, y)]
    detached = checks[-1].detail.startswith(NO_PATH)
    checks += timed(_eps_zero, model, data, clean, attacks, seed, device)
    checks += timed(_eps_one, model, x, y, idx, num_classes, seed, detached)
    checks += timed(_loss_rises, model, x, y, idx, eps, seed, eot, stochastic, detached)
    return checks


def timed(check: Callable[..., Check | list[Check]], *args: Any, **kwargs: Any) -> list[Check]:
    """Run one check function and record its wall time on what it returns (split evenly over a list)."""
    t0 = time.perf_counter()
    out = check(*args, **kwargs)
    found = out if isinstance(out, list) else [out]
    for c in found:
        c.seconds = (time.perf_counter() - t0) / len(found)
    return found


def _eval_mode(model: nn.Module) -> Check:
    """Per submodule: a model (or an attack) that left one batch norm or dropout in train mode is caught too."""
    training = [name or "(the model)" for name, m in model.named_modules() if m.training]
    return Check("eval mode", not training, True, "every submodule is in eval mode" if not training else
                 f"in train mode: {', '.join(training[:4])}{' ...' if len(training) > 4 else ''} (batch norm / "
                 "dropout / sampling behave differently from the deployed model)")


def _determinism(model: nn.Module, x: torch.Tensor, stochastic: bool) -> list[Check]:
    with torch.inference_mode():
        outs = [model(x) for _ in range(5)]
    same = all(torch.equal(outs[0], o) for o in outs[1:])
    if stochastic:
        return [Check("deterministic (5 passes)", None, False,
                      f"stochastic policy: outputs {'identical' if same else 'differ'}; EOT is required")]
    return [Check("deterministic (5 passes)", same, True, "5 forward passes give identical outputs" if same
                  else "outputs differ between passes: randomized model, gradients are stochastic")]


def _logits(model: nn.Module, x: torch.Tensor) -> Check:
    with torch.inference_mode():
        out = model(x).float()
    total, log_total = out.sum(1), out.logsumexp(1)  # over the classes: (B,), or (B, S) for sequence logits
    probs = bool(((out >= 0) & (out <= 1)).all() and torch.allclose(total, torch.ones_like(total), atol=1e-3))
    logprobs = bool((out <= 0).all() and torch.allclose(log_total, torch.zeros_like(log_total), atol=1e-3))
    return Check("logits, not softmax", not (probs or logprobs), True,
                 "outputs look like logits" if not (probs or logprobs) else
                 "outputs are (log-)probabilities: CE on them saturates and hides gradients; return logits")


def _input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """Any non-trivial share of points with an all-zero CE input gradient fails (the share is reported)."""
    with frozen_parameters(model):
        grad = input_gradient(lambda v: F.cross_entropy(model(v), y, reduction="sum"), x)
    if grad is None:
        return Check("input gradients", False, True, NO_PATH + ": gradient attacks cannot run; the number only "
                     "reflects gradient-free attacks")
    zero = int((grad.flatten(1).abs().amax(1) == 0).sum())
    share = zero / max(1, len(x))
    ok = share <= ZERO_GRADIENT_LIMIT
    return Check("input gradients", ok, True,
                 f"{zero} of {len(x)} points ({100 * share:.1f}%) have an all-zero input gradient (limit "
                 f"{100 * ZERO_GRADIENT_LIMIT:.0f}%)" + ("" if zero == 0 else
                                                        ": gradient masking (use BPDA or gradient-free attacks)"))


def _eps_zero(model: nn.Module, data: Split, clean: torch.Tensor, attacks: Sequence[Attack], seed: int,
              device: torch.device) -> Check:
    """The run's own attacks (small budgets) at eps = 0 must return the input unchanged and change no prediction."""
    from robust_uatt.evaluation.harness import gradient_probe

    x, y, idx = _subset(data, clean, device, limit=EPS_ZERO_POINTS)
    if not bool(clean[idx].all()):
        return Check("eps = 0 gives clean", None, False, "no clean-correct points")
    problems, ran = [], []
    with frozen_parameters(model):
        with torch.inference_mode():
            if not bool(hits(predict_labels(model, x), y).all()):
                problems.append("clean-correct points change prediction on a second pass")
        for attack in [a for a in attacks if a.bounded]:
            zero = _at_eps_zero(attack, seed)
            zero.prepare(model)
            if zero.gradient_based and gradient_probe(model, zero, x, y):
                continue  # no input gradient path: reported by "input gradients" / "gradient attacks ran"
            adv = zero(model, x, y, idx)
            ran.append(attack.name)
            moved = float((adv - x).abs().amax()) if adv.shape == x.shape else float("inf")
            with torch.inference_mode():
                changed = int((~hits(predict_labels(model, adv), y)).sum()) if moved == 0 else 0
            if moved != 0 or changed:
                problems.append(f"{attack.name} at eps 0 " + (f"moved inputs by {moved:.3g}" if moved else
                                                              f"changed {changed} predictions"))
    ok = not problems
    return Check("eps = 0 gives clean", ok, True,
                 f"{', '.join(ran) or 'no attack'} at eps 0 on {len(x)} clean-correct points: inputs and "
                 f"predictions unchanged" if ok else "; ".join(problems))


def _at_eps_zero(attack: Attack, seed: int) -> Attack:
    b = attack.budget
    options = {k: v for k, v in attack.opts.items() if k in type(attack).options or k == "n_classes"}
    for key, cap in (("square_queries", 20), ("restarts", 1)):
        if key in options:
            options[key] = min(int(options[key]), cap)
    return type(attack)(Budget(eps=0.0, alpha=0.0, steps=min(b.steps, 3), seed=seed, eot=min(b.eot, 2),
                               options=options))


def _eps_one(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, num_classes: int, seed: int,
             detached: bool) -> Check:
    """PGD-20 from the clean point (no random start: noise alone breaks a masked model) in the whole [0,1] box."""
    if detached:
        return Check("eps = 1 breaks everything", False, True, NO_PATH + ": PGD cannot move")
    pgd = build_attack("pgd-ce", eps=1.0, steps=20, seed=seed, options={"restarts": 1, "random_start": False})
    with frozen_parameters(model):
        adv = pgd(model, x, y, idx)
        acc = float(hits(predict_labels(model, adv), y).float().mean())
    ok = acc <= EPS_ONE_LIMIT
    return Check("eps = 1 breaks everything", ok, True,
                 f"PGD-20 without random start in the full [0,1] box leaves {100 * acc:.1f}% accuracy (must be <= "
                 f"{100 * EPS_ONE_LIMIT:.0f}%)" + ("" if ok else ": the attack cannot optimize this model (masked "
                                                              "gradients?)"))


def _loss_rises(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, eps: float | None,
                seed: int, eot: int, stochastic: bool, detached: bool) -> Check:
    """PGD-CE-10 at the run's eps from the clean point (no random start, no early stop): the cross-entropy of the
    *last* iterate (computed in float64 from the logits, so it does not saturate the way a float32 softmax does) must
    exceed the clean one on nearly every point. Flat (zero or saturated) gradients leave it unchanged; random
    gradients raise it on about half the points. (The best iterate is not used here: it is scored by the logit
    margin, which on a barely trained model need not rise when the CE does, so it can be the unmoved start.)"""
    name = "attack loss rises"
    if not eps:
        return Check(name, None, False, "eps = 0: nothing to ascend")
    if detached:
        return Check(name, False, True, NO_PATH)
    steps = 10
    with frozen_parameters(model), torch.random.fork_rng():
        torch.manual_seed(seed)
        adv = pgd(model, x, y, eps=eps, alpha=2.5 * eps / steps, steps=steps, eot=eot, early_stop=False,
                  keep="last")
        with torch.inference_mode():
            before, after = _ce64(model(x), y), _ce64(model(adv), y)
    share = float((after > before).float().mean())
    ok = share >= LOSS_RISE_SHARE
    detail = (f"PGD-CE-10 at the run's eps raised the cross-entropy on {100 * share:.1f}% of points (must be "
              f">= {100 * LOSS_RISE_SHARE:.0f}%; mean {float(before.mean()):.3g} -> {float(after.mean()):.3g})")
    if stochastic:
        return Check(name, ok, False, detail + " (stochastic policy: a warning, not a gate)")
    return Check(name, ok, True, detail + ("" if ok else ": the gradient does not point uphill (masked, "
                                                      "saturated or randomized gradients)"))


def _ce64(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy in float64 (sequences: summed over the positions that count)."""
    ce = F.cross_entropy(logits.double(), y, reduction="none")
    return ce.sum(1) if ce.dim() > 1 else ce


def check_run(outcome: SuiteOutcome, attacks_info: list[dict[str, Any]]) -> list[Check]:
    n = len(outcome.clean_correct)
    violations = [f"{r.info['name']}: {v}" for r in outcome.records for v in r.violations]
    checks = [Check("inputs in the eps-ball and [0,1]", not violations, True,
                    "every adversarial input verified" if not violations else "; ".join(violations[:3]))]
    skipped = {r.info["name"]: r.skipped for r in outcome.records if r.skipped}
    checks.append(Check("gradient attacks ran", not skipped, True,
                        "every gradient attack had an input gradient to ascend" if not skipped else
                        "; ".join(f"{name} skipped: {why}" for name, why in skipped.items())))
    flips = {r.info["name"]: r.left_train_mode for r in outcome.records if r.left_train_mode}
    modules = sorted({m for r in outcome.records for m in r.left_train_modules})
    checks.append(Check("attacks keep eval mode", not flips, True,
                        "no attack left any submodule in train mode" if not flips else
                        f"left in train mode by {flips} (batches): {', '.join(modules[:4])}; the attack's gradients "
                        "came from another function (the harness restored eval mode before judging)"))
    pairs = list(zip(outcome.records, attacks_info))
    white = {i for r, info in pairs if info["white_box"] for i in r.broken}
    black_only = {i for r, info in pairs if not info["white_box"] for i in r.broken} - white
    has_black = any(not info["white_box"] for info in attacks_info)
    has_white = any(info["white_box"] for info in attacks_info)
    if has_black and has_white:
        checks.append(_black_box_check(len(black_only), n))
    else:
        checks.append(Check("black-box <= white-box", None, False, "the suite lacks black-box or white-box attacks"))
    return checks


def check_budget(model: nn.Module, data: Split, outcome: SuiteOutcome, *, eps: float, steps: int, eot: int,
                 device: torch.device, seed: int) -> list[Check]:
    """The expensive ones (level "full"): doubled PGD budget and eps/2 monotonicity, on the points still robust."""
    robust = outcome.robust_correct()
    idx = torch.nonzero(robust).flatten()[:SUBSET * 4]
    if len(idx) == 0:
        return [Check("doubling steps changes < 1 point", None, False, "no robust points left"),
                Check("monotone in eps", None, False, "no robust points left")]
    x, y = to_float(data.x[idx].to(device)), data.y[idx].to(device)
    strong = build_attack("pgd-ce", eps=eps, steps=2 * steps, seed=seed + 1, eot=2 * eot if eot > 1 else 1,
                          options={"restarts": 2})
    half = build_attack("pgd-ce", eps=eps / 2, steps=steps, seed=seed + 2, eot=eot)
    with frozen_parameters(model):
        more = int((~hits(predict_labels(model, strong(model, x, y, idx)), y)).sum())
        at_half = int((~hits(predict_labels(model, half(model, x, y, idx)), y)).sum())
    tested = len(idx)
    return [Check("doubling steps changes < 1 point", more / tested < STEPS_MARGIN, True,
                  f"PGD with {2 * steps} steps, 2 restarts{' and 2x EOT' if eot > 1 else ''} broke {more} of the "
                  f"{tested} robust points tested ({100 * more / tested:.2f}%, limit {100 * STEPS_MARGIN:.0f}%)"),
            Check("monotone in eps", at_half == 0, True,
                  f"PGD at eps/2 broke {at_half} points the suite at eps left robust" if at_half
                  else "nothing robust at eps falls at eps/2")]


def gate(checks: list[Check]) -> tuple[bool, list[str]]:
    reasons = [f"{c.name}: {c.detail}" for c in checks if c.failed_gate()]
    return not reasons, reasons


def as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]


def _black_box_check(black_only: int, n: int) -> Check:
    """Black-box attacks may not break significantly more than 0.2% of the points that every white-box attack missed.

    The share is a binomial estimate on n points, so the check fails when the lower end of its 95% Clopper-Pearson
    interval exceeds the margin, not when the point estimate does: one stray point of 200 (0.5%, interval
    [0.01, 2.8]) is not evidence of masking, five of 200 (2.5%, [0.8, 5.7]) or ten of 1,000 ([0.5, 1.8]) are.
    """
    from robust_uatt.evaluation.intervals import clopper_pearson

    frac = black_only / max(1, n)
    lo, hi = clopper_pearson(black_only, n) if n > 0 else (0.0, 1.0)
    return Check("black-box <= white-box", lo <= BLACK_BOX_MARGIN, True,
                 f"black-box attacks broke {black_only} of {n} points ({100 * frac:.2f}%, 95% CI "
                 f"[{100 * lo:.2f}, {100 * hi:.2f}]) that no white-box attack broke (fails when the interval lies "
                 f"above {100 * BLACK_BOX_MARGIN:.1f}%)")
