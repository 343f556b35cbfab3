"""Sanity checks that decide whether a robust-accuracy number may be printed as valid.

A failed *gating* check marks the result INVALID (table, JSON, exit code 4) with its reason; other findings are
warnings in the report. They target the classic ways a defense looks robust without being so (Carlini et al. 2019,
Tramer et al. 2020): masked or shattered gradients, randomness, saturated softmax outputs, weak attack budgets.

Checks on the model (subset of clean-correct points): eval mode; determinism over 5 passes; softmax-like outputs;
zero input gradients; eps = 0 gives the clean prediction; at eps = 1 (the whole [0,1] box) PGD reaches at most
1/classes accuracy. Checks on the run: every adversarial input stayed in the ball and the box; black-box attacks
(square, noise, transfer) never break > 0.2 % of the points that every white-box attack missed; with ``level="full"``
also doubling the PGD steps (and EOT samples) changes robust accuracy by < 1 point, and accuracy is monotone in eps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_uatt.attacks import build_attack
from robust_uatt.data.datasets import Split, to_float
from robust_uatt.evaluation.harness import SuiteOutcome, frozen_parameters
from robust_uatt.evaluation.predict import predict_labels
from robust_uatt.models.outputs import hits

SUBSET = 64  # points the model-level checks look at: enough to detect, cheap enough to always run
BLACK_BOX_MARGIN = 0.002  # 0.2 points
STEPS_MARGIN = 0.01  # 1 point


@dataclass
class Check:
    name: str
    passed: bool | None  # None: not run (with the reason in detail)
    gating: bool
    detail: str

    def failed_gate(self) -> bool:
        return self.gating and self.passed is False


def _subset(data: Split, clean: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx = torch.nonzero(clean).flatten()[:SUBSET]
    if len(idx) == 0:
        idx = torch.arange(min(SUBSET, len(data)))
    return to_float(data.x[idx].to(device)), data.y[idx].to(device), idx


def check_model(model: nn.Module, data: Split, clean: torch.Tensor, *, num_classes: int, device: torch.device,
                seed: int, stochastic: bool) -> list[Check]:
    x, y, idx = _subset(data, clean, device)
    checks = [Check("eval mode", not model.training, True, "model.training is False" if not model.training
                    else "the model is in train mode (batch norm / dropout / sampling behave differently)")]
    with torch.inference_mode():
        outs = [model(x) for _ in range(5)]
    same = all(torch.equal(outs[0], o) for o in outs[1:])
    if stochastic:
        checks.append(Check("deterministic (5 passes)", None, False,
                            f"stochastic policy: outputs {'identical' if same else 'differ'}; EOT is required"))
    else:
        checks.append(Check("deterministic (5 passes)", same, True, "5 forward passes give identical outputs" if same
                            else "outputs differ between passes: randomized model, gradients are stochastic"))
    out = outs[0].float()
    total, log_total = out.sum(1), out.logsumexp(1)  # over the classes: (B,), or (B, S) for sequence logits
    probs = bool(((out >= 0) & (out <= 1)).all() and torch.allclose(total, torch.ones_like(total), atol=1e-3))
    logprobs = bool((out <= 0).all() and torch.allclose(log_total, torch.zeros_like(log_total), atol=1e-3))
    checks.append(Check("logits, not softmax", not (probs or logprobs), True,
                        "outputs look like logits" if not (probs or logprobs) else
                        "outputs are (log-)probabilities: CE on them saturates and hides gradients; return logits"))
    with frozen_parameters(model):
        xg = x.clone().requires_grad_(True)
        grad = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)[0]
    zero = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
    checks.append(Check("input gradients", zero < 0.5, True,
                        f"{100 * zero:.1f}% of points have an all-zero input gradient"
                        + (" (gradient masking: use BPDA or gradient-free attacks)" if zero > 0 else "")))
    if bool(clean[idx].all()):
        with torch.inference_mode():
            kept = float(hits(predict_labels(model, x), y).float().mean())  # correct in the clean pass
        checks.append(Check("eps = 0 gives clean", kept == 1.0, True,
                            "unperturbed inputs keep their clean predictions" if kept == 1.0 else
                            f"{100 * (1 - kept):.1f}% of clean-correct points change prediction on a second pass"))
    else:
        checks.append(Check("eps = 0 gives clean", None, False, "no clean-correct points"))
    pgd = build_attack("pgd-ce", eps=1.0, steps=20, seed=seed, options={"restarts": 1})
    with frozen_parameters(model):
        adv = pgd(model, x, y, idx)
        acc = float(hits(predict_labels(model, adv), y).float().mean())
    broken_all = acc <= 1.0 / num_classes
    detail = f"PGD-20 in the full [0,1] box leaves {100 * acc:.1f}% accuracy (must be <= {100 / num_classes:.1f}%)"
    checks.append(Check("eps = 1 breaks everything", broken_all, True,
                        detail + ("" if broken_all else ": the attack cannot optimize this model (masked gradients?)")))
    return checks


def check_run(outcome: SuiteOutcome, attacks_info: list[dict[str, Any]]) -> list[Check]:
    n = len(outcome.clean_correct)
    violations = [f"{r.info['name']}: {v}" for r in outcome.records for v in r.violations]
    checks = [Check("inputs in the eps-ball and [0,1]", not violations, True,
                    "every adversarial input verified" if not violations else "; ".join(violations[:3]))]
    flips = {r.info["name"]: r.left_train_mode for r in outcome.records if r.left_train_mode}
    checks.append(Check("attacks keep eval mode", not flips, False,
                        "no attack switched the model to train mode" if not flips else
                        f"switched to train mode by {flips} (batches); the harness restored eval mode before judging"))
    pairs = list(zip(outcome.records, attacks_info))
    white = {i for r, info in pairs if info["white_box"] for i in r.broken}
    black_only = {i for r, info in pairs if not info["white_box"] for i in r.broken} - white
    has_black = any(not info["white_box"] for info in attacks_info)
    has_white = any(info["white_box"] for info in attacks_info)
    if has_black and has_white:
        frac = len(black_only) / max(1, n)
        checks.append(Check("black-box <= white-box", frac <= BLACK_BOX_MARGIN, True,
                            f"black-box attacks broke {len(black_only)} points ({100 * frac:.2f}%) that no white-box "
                            f"attack broke (limit {100 * BLACK_BOX_MARGIN:.1f}%)"))
    else:
        checks.append(Check("black-box <= white-box", None, False, "the suite lacks black-box or white-box attacks"))
    return checks


def check_budget(model: nn.Module, data: Split, outcome: SuiteOutcome, *, eps: float, steps: int, eot: int,
                 device: torch.device, seed: int) -> list[Check]:
    """The expensive ones (level "full"): doubled PGD budget and eps/2 monotonicity, on the points still robust."""
    robust = outcome.robust_correct()
    idx = torch.nonzero(robust).flatten()[:SUBSET * 4]
    n = len(outcome.clean_correct)
    if len(idx) == 0:
        return [Check("doubling steps changes < 1 point", None, False, "no robust points left"),
                Check("monotone in eps", None, False, "no robust points left")]
    x, y = to_float(data.x[idx].to(device)), data.y[idx].to(device)
    strong = build_attack("pgd-ce", eps=eps, steps=2 * steps, seed=seed + 1, eot=2 * eot if eot > 1 else 1)
    half = build_attack("pgd-ce", eps=eps / 2, steps=steps, seed=seed + 2, eot=eot)
    with frozen_parameters(model):
        more = int((~hits(predict_labels(model, strong(model, x, y, idx)), y)).sum())
        at_half = int((~hits(predict_labels(model, half(model, x, y, idx)), y)).sum())
    return [Check("doubling steps changes < 1 point", more / n < STEPS_MARGIN, True,
                  f"PGD with {2 * steps} steps{' and 2x EOT' if eot > 1 else ''} broke {more} more of {n} points "
                  f"({100 * more / n:.2f} points)"),
            Check("monotone in eps", at_half == 0, True,
                  f"PGD at eps/2 broke {at_half} points the suite at eps left robust" if at_half
                  else "nothing robust at eps falls at eps/2")]


def gate(checks: list[Check]) -> tuple[bool, list[str]]:
    reasons = [f"{c.name}: {c.detail}" for c in checks if c.failed_gate()]
    return not reasons, reasons


def as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
