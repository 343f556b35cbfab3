"""Run a suite of attacks as a cascade and account for every example (the AutoAttack protocol, generalized).

Headline robust accuracy = mean over examples of the worst case over every attack of the suite: a point counts as
robust only if it is classified correctly clean and no attack found an adversarial example for it. Each attack runs
only on points still unbroken (``cascade=True``), so later attacks spend nothing on points already lost; per-attack
rows keep what each attack saw and broke. The harness, not the attack, judges success: it re-runs the model on every
returned input and checks the eps-ball, [0, 1] and finiteness before counting a point as broken.

Resumable: after every batch the state (clean flags, which points each attack broke, which batches it finished) is
written atomically to ``state.json``; a restarted run with the same configuration recomputes only unfinished batches.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from robust_uatt.attacks import Attack
from robust_uatt.attacks.base import input_gradient
from robust_uatt.data.datasets import Split, to_float
from robust_uatt.evaluation.attack_graph import attack_graph
from robust_uatt.evaluation.intervals import clopper_pearson
from robust_uatt.evaluation.intervals import describe as describe_ci
from robust_uatt.evaluation.judging import judge_correct
from robust_uatt.evaluation.predict import correct
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import read_json, write_json
from robust_uatt.viz.progress import progress_bar


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No autograd on parameters while attacking (only input gradients are needed); restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


class PassCounter:
    """Counts forward and backward passes through ``model``, in examples (a batch of 100 = 100 passes), with a
    forward hook: every call of the model (``forward``, and the attention model's ``rollout``, which goes through
    ``__call__`` too) adds its batch size; a backward through its output adds it again. The model itself is not
    wrapped, so attacks see it as it is."""

    def __init__(self) -> None:
        self.forwards = 0
        self.backwards = 0

    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[PassCounter]:
        handle = model.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        n = int(args[0].shape[0]) if args and torch.is_tensor(args[0]) else 0
        self.forwards += n
        out = output if torch.is_tensor(output) else getattr(output, "logits", None)
        if torch.is_tensor(out) and out.requires_grad:
            out.register_hook(self._count_backward(n))

    def _count_backward(self, n: int):
        def hook(grad: torch.Tensor) -> None:
            self.backwards += n
        return hook


@dataclass
class AttackRecord:
    """What one attack of the cascade did."""

    info: dict[str, Any]
    attacked: list[int] = field(default_factory=list)  # example indices it was run on
    broken: list[int] = field(default_factory=list)  # indices it broke (verified by the harness)
    batches_done: list[int] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0
    backwards: int = 0
    max_linf: float = 0.0
    done: bool = False
    violations: list[str] = field(default_factory=list)  # inputs outside the ball/box or non-finite: never counted
    left_train_mode: int = 0  # batches after which the attack had left a submodule in train mode (restored)
    left_train_modules: list[str] = field(default_factory=list)  # which submodules
    skipped: str | None = None  # why a gradient attack did not run (the model has no input gradient path)


@dataclass
class SuiteOutcome:
    clean_correct: torch.Tensor  # bool (n,)
    records: list[AttackRecord]
    graph: dict[str, Any] = field(default_factory=dict)  # which graph the attacks ran on (AttackGraph.describe)

    def robust_correct(self) -> torch.Tensor:
        robust = self.clean_correct.clone()
        for r in self.records:
            robust[r.broken] = False
        return robust


def _config_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_state(path: Path | None, key: str, attacks: list[Attack]) -> tuple[torch.Tensor | None, list]:
    if path is None or not path.exists():
        return None, [AttackRecord(a.describe()) for a in attacks]
    state = read_json(path)
    if state.get("config_key") != key:
        raise UserError(f"{path} belongs to a run with another configuration; use another --out (or delete it)")
    clean = torch.tensor(state["clean_correct"], dtype=torch.bool) if state.get("clean_correct") else None
    records = []
    for a, saved in zip(attacks, state["records"]):
        rec = AttackRecord(a.describe())
        for k in ("attacked", "broken", "batches_done", "seconds", "forwards", "backwards", "max_linf", "done",
                  "violations", "left_train_mode", "left_train_modules", "skipped"):
            setattr(rec, k, saved.get(k, getattr(rec, k)))
        records.append(rec)
    return clean, records


def _save_state(path: Path | None, key: str, clean: torch.Tensor, records: list[AttackRecord]) -> None:
    if path is None:
        return
    write_json(path, {"config_key": key, "clean_correct": clean.int().tolist(),
                      "records": [{k: v for k, v in r.__dict__.items() if k != "info"} for r in records]})


def run_suite(model: nn.Module, attacks: list[Attack], data: Split, *, batch_size: int, device: torch.device,
              cascade: bool = True, uncascaded: frozenset[str] = frozenset(), state_path: Path | None = None,
              config: dict[str, Any] | None = None, console: Console | None = None, draws: int = 1) -> SuiteOutcome:
    """Clean pass, then each attack on the points still unbroken (all clean-correct points if not ``cascade``).

    Attacks named in ``uncascaded`` (the paper-protocol attack) always see every clean-correct point, so their own
    accuracy is the protocol's number and not an artefact of the cascade order. Every judgement, clean and
    adversarial, is a strict majority over ``draws`` passes (randomized models; see ``robust_uatt.evaluation.judging``).
    """
    model.eval()
    for attack in attacks:
        attack.prepare(model)
    key = _config_key({"config": config or {}, "attacks": [a.describe() for a in attacks], "n": len(data),
                       "cascade": cascade, "batch_size": batch_size, **({"draws": draws} if draws != 1 else {})})
    clean, records = _load_state(state_path, key, attacks)
    graph = attack_graph(model, to_float(data.x[:batch_size].to(device)))  # BatchNorm folded, where exact
    counter = PassCounter()
    with frozen_parameters(model), counter.attached(model), progress_bar(console) as progress, \
            counter.attached(graph.module) if graph.module is not model else nullcontext():
        if clean is None:
            clean = correct(model, data.x, data.y, batch_size, device, draws)
            _save_state(state_path, key, clean, records)
        for attack, rec in zip(attacks, records):
            if rec.done:
                continue
            alive = clean.clone()
            if cascade and attack.name not in uncascaded:
                for earlier in records[:records.index(rec)]:
                    alive[earlier.broken] = False
            targets = torch.nonzero(alive).flatten()
            if not rec.attacked:
                rec.attacked = targets.tolist()
            targets = torch.tensor(rec.attacked, dtype=torch.long)
            if attack.gradient_based and not rec.batches_done and len(targets):
                first = targets[:batch_size]
                rec.skipped = gradient_probe(model, attack, to_float(data.x[first].to(device)),
                                             data.y[first].to(device))
                if rec.skipped:
                    rec.done = True
                    _save_state(state_path, key, clean, records)
                    continue
            task = progress.add_task(attack.name, total=len(targets))
            for b, start in enumerate(range(0, len(targets), batch_size)):
                idx = targets[start:start + batch_size]
                if b in rec.batches_done:
                    progress.update(task, advance=len(idx))
                    continue
                t0 = time.perf_counter()
                f0, b0 = counter.forwards, counter.backwards
                # A stochastic model (--policy sample) draws from the global generator: seed it per (attack, batch),
                # so a batch recomputed after a kill sees the same draws as in an uninterrupted run.
                torch.manual_seed(_batch_seed(attack.budget.seed, records.index(rec), b))
                broken, linf, violation, flipped = _attack_batch(graph.module, attack, data, idx, device,
                                                                 judge=model, draws=draws)
                rec.left_train_mode += int(bool(flipped))
                rec.left_train_modules = sorted(set(rec.left_train_modules) | set(flipped))
                if violation:
                    rec.violations.append(f"batch {b}: {violation}")
                rec.broken.extend(broken)
                rec.max_linf = max(rec.max_linf, linf)
                rec.seconds += time.perf_counter() - t0
                rec.forwards += counter.forwards - f0
                rec.backwards += counter.backwards - b0
                rec.batches_done.append(b)
                _save_state(state_path, key, clean, records)
                progress.update(task, advance=len(idx))
            rec.done = True
            _save_state(state_path, key, clean, records)
    return SuiteOutcome(clean, records, graph.describe())


def gradient_probe(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """Before a gradient attack's first batch: does its own objective have a non-zero input gradient there?

    None: yes (or the model's own gradient is all zero too: a masked model, which the attacks may still try and the
    input-gradient check flags). A reason: the model's output has no autograd path to its input at all (it detaches
    it), so no gradient attack can run; the harness skips them and the run is INVALID. Raises UserError (exit 2) when
    the attack's objective has no gradient although the model's cross-entropy has one: the attack is misconfigured
    for this model and would only report its random start.
    """
    with torch.enable_grad():
        own = input_gradient(lambda v: attack.objective(model, v, y), x)
        if own is not None and bool((own != 0).any()):
            return None
        plain = input_gradient(lambda v: torch.nn.functional.cross_entropy(model(v), y, reduction="sum"), x)
    if plain is None:
        return "the model's output has no autograd path to its input (detached input): gradient attacks cannot run"
    if bool((plain != 0).any()):
        lacks = "no path to" if own is None else "a zero gradient with respect to"
        raise UserError(f"attack {attack.name}: its objective has {lacks} the input on the first batch although "
                        "the model's cross-entropy has a gradient there; it would only report its random start "
                        "(check its options, e.g. grad_path)")
    return None


def _batch_seed(seed: int, attack_position: int, batch: int) -> int:
    return (seed * 1_000_003 + attack_position * 7_919 + batch * 104_729 + 1) % 2**63


def _attack_batch(model: nn.Module, attack: Attack, data: Split, idx: torch.Tensor, device: torch.device,
                  judge: nn.Module, draws: int = 1) -> tuple[list[int], float, str | None, list[str]]:
    """Attack one batch on ``model`` (the attack graph); return the indices the harness verified as broken on
    ``judge`` (the original model), the largest L-inf perturbation, a violation (inputs outside [0,1] or the
    eps-ball, NaN: then nothing of the batch counts and the run is INVALID) and the submodules the attack left in
    train mode."""
    x = to_float(data.x[idx].to(device, non_blocking=True))
    y = data.y[idx].to(device, non_blocking=True)
    eps = attack.budget.eps
    flipped: list[str] = []
    if attack.bounded and eps == 0:
        adv = x
    else:
        adv = attack(model, x, y, idx)  # eval mode and frozen parameters during the attack, restored after it
        flipped = list(attack.left_train_mode)  # submodules the attack left in train mode (the call restored them)
    if adv.shape != x.shape or not torch.isfinite(adv).all():
        return [], float("nan"), "non-finite inputs or wrong shape", flipped
    linf = float((adv - x).abs().amax()) if len(x) else 0.0
    if adv.min() < 0 or adv.max() > 1:
        return [], linf, f"inputs outside [0, 1] (min {float(adv.min()):.4g}, max {float(adv.max()):.4g})", flipped
    if attack.bounded and linf > eps + 1e-6:
        return [], linf, f"left the eps-ball: |delta|_inf = {linf:.6g} > {eps:.6g}", flipped
    fooled = (~judge_correct(judge, adv, y, draws)).cpu()  # exact float32, on the batch the attack saw
    return idx[fooled].tolist(), linf, None, flipped


def summarize(outcome: SuiteOutcome, paper_attack: str | None = None) -> dict[str, Any]:
    """Headline numbers and one row per attack (cumulative robust accuracy after it), each accuracy with its 95%
    Clopper-Pearson interval (``*_ci``, see ``robust_uatt.evaluation.intervals``)."""
    n = len(outcome.clean_correct)
    robust = outcome.clean_correct.clone()
    rows = []
    for rec in outcome.records:
        robust[rec.broken] = False
        rows.append({**rec.info, "attacked": len(rec.attacked), "broken": len(rec.broken),
                     "robust_accuracy_after": float(robust.float().mean()) if n else float("nan"),
                     "robust_accuracy_after_ci": list(clopper_pearson(int(robust.sum()), n)),
                     "seconds": rec.seconds, "forward_passes": rec.forwards, "backward_passes": rec.backwards,
                     "max_linf": rec.max_linf, "violations": rec.violations,
                     "left_train_mode": rec.left_train_mode, "skipped": rec.skipped})
    out: dict[str, Any] = {
        "n": n, "clean_accuracy": float(outcome.clean_correct.float().mean()),
        "robust_accuracy": float(robust.float().mean()), "attacks": rows,
        "clean_accuracy_ci": list(clopper_pearson(int(outcome.clean_correct.sum()), n)),
        "robust_accuracy_ci": list(clopper_pearson(int(robust.sum()), n)), "confidence_interval": describe_ci(),
        "seconds": sum(r.seconds for r in outcome.records),
        "forward_passes": sum(r.forwards for r in outcome.records),
        "backward_passes": sum(r.backwards for r in outcome.records),
        "attack_graph": outcome.graph,
    }
    paper = next((r for r in outcome.records if r.info["name"] == paper_attack), None)
    if paper is not None:
        paper_robust = outcome.clean_correct.clone()
        paper_robust[paper.broken] = False
        out["paper_protocol_accuracy"] = float(paper_robust.float().mean())
        out["paper_protocol_accuracy_ci"] = list(clopper_pearson(int(paper_robust.sum()), n))
        out["overestimation"] = out["paper_protocol_accuracy"] - out["robust_accuracy"]
    return out
