"""Run a suite of attacks as a cascade and account for every example (the AutoAttack protocol, generalized).

Headline robust accuracy = mean over examples of the worst case over every attack of the suite: a point counts as
robust only if it is classified correctly clean and no attack found an adversarial example for it. Each attack runs
only on points still unbroken (``cascade=True``), so later attacks spend nothing on points already lost; per-attack
rows keep what each attack saw and broke. The harness, not the attack, judges success: it re-runs the model on every
returned input and checks the eps-ball, [0, 1] and finiteness before counting a point as broken.

Resumable: after every batch the state (clean flags, which points each attack broke, which batches it finished) is
written atomically to ``state.json``; a restarted run with the same configuration recomputes only unfinished batches.

Shardable: the n points fall into evaluation blocks of ``block`` points (default 1000; one block when n <= block,
which is exactly the unblocked cascade). The cascade runs inside each block: an attack's batches are the points of
one block still unbroken, and each batch's generator seed comes from (seed, attack, global batch number). A point's
outcome therefore depends only on its block, never on which process evaluates it, so a shard (a contiguous range of
blocks, ``shard=(i, k)``) computes exactly the per-example outcomes the one-process run computes for those points,
and ``merge_states`` joins the shards' states into the one-process state.
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
    attack_seconds_here: float = 0.0  # attack time this process spent (a resumed run's records also hold earlier time)

    def robust_correct(self) -> torch.Tensor:
        robust = self.clean_correct.clone()
        for r in self.records:
            robust[r.broken] = False
        return robust


DEFAULT_BLOCK = 1000  # points per evaluation block (the unit a shard holds; see the module docstring)

RECORD_FIELDS = ("attacked", "broken", "batches_done", "seconds", "forwards", "backwards", "max_linf", "done",
                 "violations", "left_train_mode", "left_train_modules", "skipped")


def _config_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def suite_key(config: dict[str, Any] | None, attacks: list[Attack], n: int, *, cascade: bool, batch_size: int,
              draws: int = 1, block: int = DEFAULT_BLOCK, shard: tuple[int, int] | None = None) -> str:
    """The key a state.json carries: a run resumes (or a merge accepts) only states of the same configuration.
    Blocks enter it only when there are several, shards only for a shard, so one-block runs keep their old key."""
    return _config_key({"config": config or {}, "attacks": [a.describe() for a in attacks], "n": n,
                        "cascade": cascade, "batch_size": batch_size, **({"draws": draws} if draws != 1 else {}),
                        **({"block": block} if n > block else {}),
                        **({"shard": list(shard)} if shard is not None else {})})


def shard_blocks(n: int, block: int, shard: tuple[int, int] | None) -> range:
    """The evaluation blocks shard ``(i, k)`` holds: a contiguous range, as even as the block count allows."""
    if block <= 0:
        raise UserError(f"--block must be a positive integer, got {block}")
    blocks = -(-n // block)
    if shard is None:
        return range(blocks)
    i, k = shard
    if not 0 <= i < k:
        raise UserError(f"shard {i}/{k}: need 0 <= i < k")
    if k > blocks:
        raise UserError(f"{k} shards cannot split {n} points: they make {blocks} evaluation block(s) of {block} "
                        f"(use --block {max(1, -(-n // k))} or at most {blocks} shard(s)/ranks)")
    return range(i * blocks // k, (i + 1) * blocks // k)


def _records_from(attacks: list[Attack], saved_records: list[dict[str, Any]]) -> list[AttackRecord]:
    records = []
    for a, saved in zip(attacks, saved_records):
        rec = AttackRecord(a.describe())
        for k in RECORD_FIELDS:
            setattr(rec, k, saved.get(k, getattr(rec, k)))
        records.append(rec)
    return records


def _load_state(path: Path | None, key: str, attacks: list[Attack]) -> tuple[torch.Tensor | None, list]:
    if path is None or not path.exists():
        return None, [AttackRecord(a.describe()) for a in attacks]
    state = read_json(path)
    if state.get("config_key") != key:
        raise UserError(f"{path} belongs to a run with another configuration; use another --out (or delete it)")
    clean = torch.tensor(state["clean_correct"], dtype=torch.bool) if state.get("clean_correct") else None
    return clean, _records_from(attacks, state["records"])


def _save_state(path: Path | None, key: str, clean: torch.Tensor, records: list[AttackRecord],
                shard: dict[str, Any] | None = None) -> None:
    if path is None:
        return
    write_json(path, {"config_key": key, "clean_correct": clean.int().tolist(),
                      "records": [{k: v for k, v in r.__dict__.items() if k != "info"} for r in records],
                      **({"shard": shard} if shard else {})})


def run_suite(model: nn.Module, attacks: list[Attack], data: Split, *, batch_size: int, device: torch.device,
              cascade: bool = True, uncascaded: frozenset[str] = frozenset(), state_path: Path | None = None,
              config: dict[str, Any] | None = None, console: Console | None = None, draws: int = 1,
              block: int = DEFAULT_BLOCK, shard: tuple[int, int] | None = None) -> SuiteOutcome:
    """Clean pass, then each attack on the points still unbroken (all clean-correct points if not ``cascade``).

    Attacks named in ``uncascaded`` (the paper-protocol attack) always see every clean-correct point, so their own
    accuracy is the protocol's number and not an artefact of the cascade order. Every judgement, clean and
    adversarial, is a strict majority over ``draws`` passes (randomized models; see ``robust_uatt.evaluation.judging``).
    ``shard=(i, k)``: evaluate only shard i of k (its blocks); the outcome's other points stay unevaluated (False).
    """
    model.eval()
    for attack in attacks:
        attack.prepare(model)
    n = len(data)
    blocks = shard_blocks(n, block, shard)
    per_block = -(-min(block, max(n, 1)) // batch_size)  # batches a full block can hold: global batch numbering
    seed = attacks[0].budget.seed if attacks else 0
    key = suite_key(config, attacks, n, cascade=cascade, batch_size=batch_size, draws=draws, block=block,
                    shard=shard)
    span = (blocks.start * block, min(n, blocks.stop * block))
    shard_info = {"index": shard[0], "count": shard[1], "block": block, "points": list(span)} if shard else None
    clean, records = _load_state(state_path, key, attacks)
    spent = 0.0  # attack seconds this process
    # BatchNorm folded where exact, decided on the first batch of all n points (the same in every shard)
    graph = attack_graph(model, to_float(data.x[:batch_size].to(device)))
    counter = PassCounter()

    def save() -> None:
        if shard_info is None:
            _save_state(state_path, key, clean, records)
        else:
            _save_state(state_path, key, clean, records, shard=shard_info)

    with frozen_parameters(model), counter.attached(model), progress_bar(console) as progress, \
            counter.attached(graph.module) if graph.module is not model else nullcontext():
        if clean is None:
            clean = torch.zeros(n, dtype=torch.bool)
            for j in blocks:
                lo, hi = j * block, min(n, (j + 1) * block)
                if j:  # block 0 draws on from the run's seed as the unblocked harness always did
                    torch.manual_seed(_clean_seed(seed, j))
                clean[lo:hi] = correct(model, data.x[lo:hi], data.y[lo:hi], batch_size, device, draws)
            save()
        for attack, rec in zip(attacks, records):
            if rec.done:
                continue
            position = records.index(rec)
            alive = clean.clone()
            if cascade and attack.name not in uncascaded:
                for earlier in records[:position]:
                    alive[earlier.broken] = False
            in_shard = torch.zeros(n, dtype=torch.bool)
            in_shard[span[0]:span[1]] = True
            targets = torch.nonzero(alive & in_shard).flatten()
            if not rec.attacked:
                rec.attacked = targets.tolist()
            targets = torch.tensor(rec.attacked, dtype=torch.long)
            if attack.gradient_based and not rec.batches_done and len(targets):
                first = targets[:batch_size]
                rec.skipped = gradient_probe(model, attack, to_float(data.x[first].to(device)),
                                             data.y[first].to(device))
                if rec.skipped:
                    rec.done = True
                    save()
                    continue
            task = progress.add_task(attack.name, total=len(targets))
            for j in blocks:
                in_block = targets[(targets >= j * block) & (targets < (j + 1) * block)]
                for b, start in enumerate(range(0, len(in_block), batch_size)):
                    idx = in_block[start:start + batch_size]
                    g = j * per_block + b  # the global batch number: b itself in block 0
                    if g in rec.batches_done:
                        progress.update(task, advance=len(idx))
                        continue
                    t0 = time.perf_counter()
                    f0, b0 = counter.forwards, counter.backwards
                    # A stochastic model (--policy sample) draws from the global generator: seed it per (attack,
                    # batch), so a batch recomputed after a kill, or in another shard, sees the same draws.
                    torch.manual_seed(_batch_seed(attack.budget.seed, position, g))
                    broken, linf, violation, flipped = _attack_batch(graph.module, attack, data, idx, device,
                                                                     judge=model, draws=draws)
                    rec.left_train_mode += int(bool(flipped))
                    rec.left_train_modules = sorted(set(rec.left_train_modules) | set(flipped))
                    if violation:
                        rec.violations.append(f"batch {g}: {violation}")
                    rec.broken.extend(broken)
                    rec.max_linf = max(rec.max_linf, linf)
                    took = time.perf_counter() - t0
                    rec.seconds += took
                    spent += took
                    rec.forwards += counter.forwards - f0
                    rec.backwards += counter.backwards - b0
                    rec.batches_done.append(g)
                    save()
                    progress.update(task, advance=len(idx))
            rec.done = True
            save()
    return SuiteOutcome(clean, records, graph.describe(), spent)


def merge_states(states: list[tuple[str, dict[str, Any]]], keys: dict[int, str], count: int,
                 attacks: list[Attack]) -> tuple[torch.Tensor, list[AttackRecord]]:
    """Join the finished states of shards 0..count-1 (``(where, state.json content)`` pairs; ``keys[i]``: the key
    shard i of this configuration carries) into the state of the one-process run: per-example flags and broken lists
    as it would have them, passes and seconds summed. Refused (UserError) when a shard is missing, given twice, of
    another shard count or configuration (model, seed, attacks, eps, n, block), or unfinished."""
    found: dict[int, tuple[str, dict[str, Any]]] = {}
    for where, state in states:
        info = state.get("shard") if isinstance(state, dict) else None
        if not isinstance(info, dict) or not all(isinstance(info.get(k), int) for k in ("index", "count")):
            raise UserError(f"{where}: not the state of a shard (made without --shard)")
        i = info["index"]
        if info["count"] != count:
            raise UserError(f"{where}: shard {i}/{info['count']}, but {count} shard(s) are merged")
        if i in found:
            raise UserError(f"shard {i}/{count} given twice ({found[i][0]} and {where}): shards overlap")
        if state.get("config_key") != keys.get(i):
            raise UserError(f"{where}: shard {i}/{count} was made with another configuration (model, seed, attacks, "
                            f"eps, n, block or batch size) than this merge")
        records = state.get("records")
        if not isinstance(records, list) or len(records) != len(attacks) or not all(r.get("done") for r in records):
            raise UserError(f"{where}: shard {i}/{count} has not finished; rerun its command to complete it")
        found[i] = (where, state)
    missing = sorted(set(range(count)) - set(found))
    if missing:
        raise UserError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing from the merge")
    clean = None
    merged = [AttackRecord(a.describe()) for a in attacks]
    for i in range(count):
        state = found[i][1]
        lo, hi = state["shard"]["points"]
        part = torch.tensor(state["clean_correct"], dtype=torch.bool)
        clean = torch.zeros_like(part) if clean is None else clean
        clean[lo:hi] = part[lo:hi]
        for rec, saved in zip(merged, _records_from(attacks, state["records"])):
            rec.attacked += saved.attacked
            rec.broken += saved.broken
            rec.batches_done += saved.batches_done
            rec.seconds += saved.seconds
            rec.forwards += saved.forwards
            rec.backwards += saved.backwards
            rec.max_linf = max(rec.max_linf, saved.max_linf)
            rec.violations += saved.violations
            rec.left_train_mode += saved.left_train_mode
            rec.left_train_modules = sorted(set(rec.left_train_modules) | set(saved.left_train_modules))
            rec.skipped = rec.skipped or saved.skipped
            rec.done = True
    assert clean is not None
    return clean, merged


def write_state(path: Path, key: str, clean: torch.Tensor, records: list[AttackRecord]) -> None:
    """Write a (merged) one-process state, which ``run_suite`` then resumes with nothing left to compute."""
    _save_state(path, key, clean, records)


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


def _clean_seed(seed: int, block: int) -> int:
    """The clean pass of block j > 0 starts from its own seed (block 0 from the run's), so a shard needs no other."""
    return (seed * 1_000_003 + block * 15_485_863 + 2) % 2**63


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
