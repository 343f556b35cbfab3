"""The training loop, short enough to read in one sitting.

Tricks, each named: uint8 data held in memory and augmented on tensors (no per-image Python); channels_last VGG
(set in the model); a fused optimizer step (one kernel for all parameters); one-cycle learning rate computed from
the step number (no scheduler state to save); bf16 autocast on CUDA only (bf16 on a CPU without AMX is ~10x
slower); a model may define ``objective(x, y)`` (the attention model's Eq. 14 + Q loss) and
``after_optimizer_step()`` (its frozen target sync); everything else is trained with cross-entropy.
Adversarial training (a recipe's ``[adv]``) swaps the clean loss for ``adversarial.adversarial_loss`` in
``train_step`` and adds the catastrophic-overfitting guard after every epoch.

Resumable: ``checkpoint.safetensors`` holds weights, optimizer state and both RNG states at an epoch end (and every
``checkpoint_every`` steps), so a resumed run replays the exact same batches. Crash-safe: every file is written
atomically (utils/files.py), one process at a time holds the run directory (RunLock), Ctrl-C or SIGTERM checkpoints
after the current step and prints the resume command (a second Ctrl-C stops at once, keeping the last checkpoint),
and on the CPU deterministic algorithms are on, so a run killed with SIGKILL and resumed ends bit-identical to an
uninterrupted one. A non-finite loss, or non-finite weights about to be checkpointed, stop the run
(``TrainingDiverged``) and keep the last good checkpoint.

Under torchrun (WORLD_SIZE > 1, ``utils/distributed.py``): the step's whole loss runs inside one
DistributedDataParallel forward (``StepLoss``; unused parameters found for models with their own objective, the
frozen target network left out of the reduction and kept in sync by the same deterministic copy on every rank); each
epoch is sharded the way torch's seeded ``DistributedSampler`` shards it, global batch b being the one-process run's
batch b split across ranks (every rank augments the whole global batch from the shared data generator and keeps its
positions), so a run matches the one-process run with the same global batch up to float reduction order
(BatchNorm models: with SyncBatchNorm, CUDA only); rank 0 alone logs, checkpoints (with every rank's RNG state) and
writes the card; every other rank reads the checkpoint through rank 0 on resume, so nodes need no shared disk.
"""

from __future__ import annotations

import math
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from robust_uatt.data.datasets import Split, augment_crop_flip, load_split, to_float
from robust_uatt.evaluation.predict import accuracy
from robust_uatt.models.zoo import Recipe, create_model
from robust_uatt.training import adversarial
from robust_uatt.training.card import config_versions, read_metrics, write_model_card
from robust_uatt.training.checkpoint import (
    CARD,
    CHECKPOINT,
    CONFIG,
    METRICS,
    WEIGHTS,
    TrainingDiverged,
    TrainState,
    load_checkpoint,
    save_checkpoint,
    truncate_lines,
)
from robust_uatt.training.config import AdvSettings
from robust_uatt.training.objective import count_correct, model_loss
from robust_uatt.training.selection import BestValidation
from robust_uatt.utils import distributed
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import RunLock, append_jsonl, atomic_write_text, remove_stale_temps, write_json
from robust_uatt.utils.runtime import configure, seed_all, versions
from robust_uatt.utils.runtime import deterministic as deterministic_mode
from robust_uatt.viz.progress import progress_bar


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during training; ``signum`` gives the CLI its exit code (128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While active, the first Ctrl-C / SIGTERM only sets ``requested`` (the loop checkpoints after the current step
    and raises ``Interrupted``); a second one raises ``Interrupted`` at once. Previous handlers come back on exit."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.getsignal(s) for s in self.HANDLED}
        for sig in self.HANDLED:
            signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise Interrupted(signum)  # the second one: stop at once; the last checkpoint stays whole (atomic)
        self.requested = signum

    def check(self) -> None:
        if self.requested is not None:
            raise Interrupted(self.requested)


def lr_at(step: int, total: int, cfg: dict[str, Any]) -> float:
    lr = float(cfg["lr"])
    if cfg["schedule"] == "constant":
        return lr
    if cfg["schedule"] == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * step / total))
    warm = max(1, int(cfg["warmup"] * total))
    return lr * (step + 1) / warm if step < warm else lr * max(0.0, (total - step) / max(1, total - warm))


def make_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam or SGD as the recipe says, with torch's fused update (``fused=True``: one kernel over all parameters
    instead of a loop of per-parameter ops; the same update rule). On the 2-core CPU the per-parameter loop took ~10%
    of a full-width VGG16 step; fused, the optimizer step is 2x (SGD) to 6x (Adam) faster."""
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True)
    return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                           weight_decay=cfg["weight_decay"], fused=True)


def split_data(recipe: Recipe, data_dir: str | None, download: bool) -> tuple[Split, Split, Split]:
    """(train, validation, test): validation is a hold-out from the end of train, or the test split."""
    train = load_split(recipe.dataset, "train", data_dir, download, recipe.data)
    test = load_split(recipe.dataset, "test", data_dir, download, recipe.data)
    holdout = recipe.data["holdout"]
    if holdout >= len(train):
        raise UserError(f"[data] holdout {holdout} leaves no training data ({len(train)} images)")
    val = train.subset(slice(len(train) - holdout, None)) if holdout else test
    if holdout:
        train = train.subset(slice(0, len(train) - holdout))
    t = recipe.train
    if t["limit_train"]:
        train = train.subset(slice(0, t["limit_train"]))
    if t["limit_val"]:
        val = val.subset(slice(0, t["limit_val"]))
    if t["limit_test"]:
        test = test.subset(slice(0, t["limit_test"]))
    return train, val, test


@dataclass
class Run:
    """One training run's fixed inputs: recipe, where it writes, seed, device, the three splits, the console."""

    recipe: Recipe
    run_dir: Path
    seed: int
    device: torch.device
    splits: tuple[Split, Split, Split]
    console: Console
    adv: AdvSettings | None = None  # adversarial training (the recipe's [adv]); None = clean
    where: distributed.Launch = field(default_factory=distributed.Launch)  # rank and world size (torchrun)
    sync_bn: bool = False  # BatchNorm -> SyncBatchNorm under DDP (CUDA)
    ddp: nn.Module | None = None  # the DistributedDataParallel-wrapped StepLoss when world size > 1

    @property
    def cfg(self) -> dict[str, Any]:
        return self.recipe.train

    @property
    def epoch_size(self) -> int:
        """Examples an epoch visits: the training set, padded to a multiple of the world size (DistributedSampler)."""
        w = self.where.world_size
        return math.ceil(len(self.splits[0]) / w) * w

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.epoch_size / self.cfg["batch_size"])

    def distributed_info(self) -> dict[str, Any]:
        """What the config and the model card record about the launch."""
        w = self.where.world_size
        return {"world_size": w, "global_batch": self.cfg["batch_size"], "per_rank_batch": self.cfg["batch_size"] // w,
                "backend": ("nccl" if self.device.type == "cuda" else "gloo") if w > 1 else None,
                "sync_batchnorm": self.sync_bn and w > 1}

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg["epochs"]

    def checkpoint(self, state: TrainState) -> None:
        """Rank 0 writes; under DDP every rank's generator states ride along (``rng.cpu.rank<r>``), so each rank
        resumes its own stream (a collective: every rank calls it at the same step)."""
        extra = None
        if self.where.distributed:
            mine = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                mine["cuda"] = torch.cuda.get_rng_state()
            every = distributed.all_gather_object(mine, "gathering the ranks' RNG states for a checkpoint")
            extra = {f"rng.{k}.rank{r}": v for r, states in enumerate(every) for k, v in states.items()}
        if self.where.is_main:
            save_checkpoint(self.run_dir / CHECKPOINT, state, seed=self.seed, recipe=self.recipe.to_dict(),
                            steps_per_epoch=self.steps_per_epoch, extra=extra)


def train(recipe: Recipe, run_dir: Path, *, seed: int, device: torch.device, data_dir: str | None = None,
          resume: bool = False, download: bool = True, console: Console | None = None,
          deterministic: bool | None = None, sync_bn: bool = False) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir``; returns the model card. ``resume`` continues from its checkpoint.

    Data and model are checked before ``run_dir`` is touched, so a user error writes nothing. A fresh run that
    fails before its first checkpoint (bad input, full disk) removes the directory it created.
    ``deterministic``: see ``runtime.deterministic`` (None = on for the CPU only).
    """
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    splits = split_data(recipe, data_dir, download)
    # a recipe whose model cannot be built, or bad adversarial settings, fail here, before anything is written
    adv = adversarial.settings_for(recipe, create_model(recipe))
    where = distributed.launch()
    if where.distributed:
        return _train_distributed(Run(recipe, run_dir, seed, device, splits, console, adv, where, sync_bn), data_dir,
                                  resume, deterministic)
    created = not resume and not run_dir.exists()
    try:
        lock = RunLock(run_dir).acquire()
    except BaseException:
        _remove_if_empty(run_dir, created)
        raise
    fresh = False  # True once this process owns a fresh run directory (and the files it writes there)
    try:
        _check_run_dir(run_dir, resume)  # again under the lock: another run may have finished here meanwhile
        fresh = not resume
        remove_stale_temps(run_dir)  # left by a writer killed mid-write; we hold the lock, so none is live
        with deterministic_mode(device, deterministic):
            return _train_locked(Run(recipe, run_dir, seed, device, splits, console, adv), data_dir, resume)
    except (UserError, OSError, TrainingDiverged):
        if fresh and not (run_dir / CHECKPOINT).exists():  # nothing to resume: leave nothing half-made
            for f in (run_dir / CONFIG, run_dir / METRICS):
                f.unlink(missing_ok=True)
            remove_stale_temps(run_dir)
        raise
    finally:
        lock.release()
        _remove_if_empty(run_dir, created)


def _train_distributed(run: Run, data_dir: str | None, resume: bool, deterministic: bool | None) -> dict[str, Any]:
    """``train`` under torchrun: rank 0 alone holds the run directory's lock and writes; a refusal there (a run
    already in it, a lock held elsewhere) is one line on every rank."""
    distributed.init(run.device)
    if not run.where.is_main:
        run.console = Console(stderr=True, quiet=True)
    created = not resume and not run.run_dir.exists()

    def claim() -> RunLock | None:
        if not run.where.is_main:
            return None
        lock = RunLock(run.run_dir).acquire()
        try:
            _check_run_dir(run.run_dir, resume)
            remove_stale_temps(run.run_dir)
        except BaseException:
            lock.release()
            raise
        return lock

    try:
        lock = distributed.unanimous(claim, "claiming the run directory")
    except BaseException:
        if run.where.is_main:
            _remove_if_empty(run.run_dir, created)
        raise
    try:
        with deterministic_mode(run.device, deterministic):
            card = _train_locked(run, data_dir, resume)
        distributed.barrier("finishing the run")
        return card
    except distributed.DistributedFailure as e:
        resume_cmd = (f"torchrun --nproc_per_node=... -m robust_uatt train --resume {shlex.quote(str(run.run_dir))} "
                      f"(world size {run.where.world_size})")
        raise distributed.DistributedFailure(f"{e}; the last checkpoint is kept: {resume_cmd}") from None
    except (UserError, OSError, TrainingDiverged):
        if run.where.is_main and not resume and not (run.run_dir / CHECKPOINT).exists():
            for f in (run.run_dir / CONFIG, run.run_dir / METRICS):
                f.unlink(missing_ok=True)
            remove_stale_temps(run.run_dir)
        raise
    finally:
        run.ddp = None  # release the DDP wrapper (it holds the process group) before the group is destroyed
        if lock is not None:
            lock.release()
            _remove_if_empty(run.run_dir, created)


class StepLoss(nn.Module):
    """One training step's whole loss as one module call, which is what DistributedDataParallel wraps: its forward
    is the only call DDP sees, so every term (cross-entropy; the attention model's classification, context,
    REINFORCE, baseline and Q losses; the adversarial loss with its inner attack) has its gradients reduced."""

    def __init__(self, model: nn.Module, run: Run, gen: torch.Generator) -> None:
        super().__init__()
        self.model = model
        self._run = [run]  # not a submodule
        self._gen = gen

    def forward(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], float]:
        return step_loss(self.model, self._run[0], xb, yb, self._gen)


def wrap_ddp(run: Run, state: TrainState) -> None:
    """``run.ddp`` = DistributedDataParallel around the step's loss (broadcasting rank 0's weights and buffers):
    unused parameters are looked for in models with their own objective (the attention model's terms do not all
    touch every parameter); parameters with requires_grad off (the frozen target network) are not reduced."""
    from torch.nn.parallel import DistributedDataParallel

    with distributed.collective("wrapping the model in DistributedDataParallel"):
        run.ddp = DistributedDataParallel(
            StepLoss(state.model, run, state.gen), device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=hasattr(state.model, "objective"))


def step_loss(model: nn.Module, run: Run, xb: torch.Tensor, yb: torch.Tensor,
              gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float], float]:
    """(loss with graph, loss terms, correct predictions): the model's own objective or cross-entropy, on the
    adversarial batch with adversarial training."""
    if run.adv is not None:
        return adversarial.adversarial_loss(model, xb, yb, run.adv, gen, run.cfg["label_smoothing"])
    loss, tensor_terms, logits = model_loss(model, xb, yb, run.cfg["label_smoothing"])
    return loss, {k: float(v) for k, v in tensor_terms.items()}, count_correct(logits, yb)


def _load_checkpoint_everywhere(run: Run, state: TrainState) -> None:
    """Every rank loads rank 0's checkpoint (sent over the process group: no shared disk needed), then its own RNG
    states from it; ranks other than 0 start their share of an interrupted epoch's running sums at zero (rank 0's
    checkpoint holds the sums of all ranks)."""
    path = run.run_dir / CHECKPOINT
    blob = distributed.broadcast_object(path.read_bytes() if run.where.is_main else None,
                                        "sending the checkpoint to every rank")
    if run.where.is_main:
        tensors = load_checkpoint(path, state)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / CHECKPOINT
            copy.write_bytes(blob)
            tensors = load_checkpoint(copy, state)
        if state.partial:
            state.partial = {"seen": 0, "correct": 0.0, "sums": {k: 0.0 for k in state.partial.get("sums", {})}}
    mine = tensors.get(f"rng.cpu.rank{run.where.rank}")
    if mine is not None:
        torch.set_rng_state(mine)
    cuda = tensors.get(f"rng.cuda.rank{run.where.rank}")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def _rank_seed(base: int, rank: int) -> int:
    """Each rank's global-generator seed for an epoch (sampled locations, exploration): rank 0 keeps the
    one-process seed."""
    return (base + rank * 1_000_000_007) % 2**63


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """What ``train`` may do with ``run_dir`` (call under its lock): resume an unfinished run, or start in an empty
    one; never overwrite a run that holds a checkpoint or finished weights."""
    if resume:
        if (run_dir / WEIGHTS).exists():
            raise UserError(f"{run_dir}: this run has already finished")
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"{run_dir}: nothing to resume (no {CHECKPOINT})")
    elif (run_dir / CHECKPOINT).exists() or (run_dir / WEIGHTS).exists():
        raise UserError(f"{run_dir} already holds a run: use --resume {run_dir}, or another --out")


def _remove_if_empty(run_dir: Path, created: bool) -> None:
    if created and run_dir.is_dir() and not any(run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def _train_locked(run: Run, data_dir: str | None, resume: bool) -> dict[str, Any]:
    configure(run.device)
    train_set, val_set, test_set = run.splits
    if run.device.type == "cuda":  # the uint8 training set (150 MB for CIFAR-10) lives on the GPU: no per-step copies
        train_set = Split(train_set.x.to(run.device), train_set.y.to(run.device), train_set.source,
                          train_set.lossless)
        run.splits = (train_set, val_set, test_set)
    seed_all(run.seed)
    model = create_model(run.recipe).to(run.device)
    if run.sync_bn and run.where.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state dict keys: checkpoints load anywhere
    state = TrainState(model, make_optimizer(model, run.cfg), torch.Generator())
    main = run.where.is_main
    if resume:
        if run.where.distributed:
            _load_checkpoint_everywhere(run, state)
        else:
            load_checkpoint(run.run_dir / CHECKPOINT, state)
        if main:
            truncate_lines(run.run_dir / METRICS, state.metrics_lines)
            if len(read_metrics(run.run_dir / METRICS)) != state.metrics_lines:  # else the final card would be wrong
                raise UserError(f"{run.run_dir / METRICS}: holds fewer epoch records than {run.run_dir / CHECKPOINT} "
                                f"accounts for ({state.metrics_lines}); the run directory is damaged")
        run.console.print(f"resuming {run.run_dir} at epoch {state.epoch + 1}, step {state.step_in_epoch}",
                          markup=False)
    elif main:
        write_json(run.run_dir / CONFIG, {"recipe": run.recipe.to_dict(), "seed": run.seed, "device": str(run.device),
                                          "data_dir": data_dir, "argv": sys.argv, "versions": versions(),
                                          **({"distributed": run.distributed_info()} if run.where.distributed
                                             else {})})
        atomic_write_text(run.run_dir / METRICS, "")
    if run.where.distributed:
        wrap_ddp(run, state)
    guard = (adversarial.OverfitGuard(run.run_dir, run.adv, val_set, run.device, run.cfg["eval_batch_size"],
                                      read_metrics(run.run_dir / METRICS)) if run.adv and main else None)
    # rank 0 alone keeps the best-validation weights (best.safetensors) and decides when patience runs out
    selector = (BestValidation(run.run_dir, run.cfg["patience"], read_metrics(run.run_dir / METRICS))
                if run.cfg["select"] == "best-val" and main else None)
    started = time.perf_counter()
    patience = not (selector and selector.out_of_patience())
    if run.where.distributed:
        patience = distributed.broadcast_object(patience, "sharing the selection state")
    with StopSignals() as stop, _resume_hint_on_interrupt(run):
        while state.epoch < run.cfg["epochs"] and patience:
            record = train_one_epoch(run, state, stop)
            collapsed = guard is not None and guard.update(record, state.model)
            if selector is not None:
                selector.update(record, state.model)
            patience = not (selector and selector.out_of_patience())
            if run.where.distributed:  # rank 0's guard and selector decide for every rank
                record, collapsed, patience = distributed.broadcast_object((record, collapsed, patience),
                                                                           "sharing the epoch record")
            if main:
                append_jsonl(run.run_dir / METRICS, record)
            if collapsed:
                if guard is not None:
                    run.console.print(guard.restore(state.model), markup=False, highlight=False, soft_wrap=True)
                break
            state.epoch, state.step_in_epoch, state.partial, state.data_rng = state.epoch + 1, 0, {}, None
            state.metrics_lines += 1
            run.checkpoint(state)
            stop.check()  # the signal came during validation: this checkpoint is the one
            run.console.print(f"epoch {state.epoch}/{run.cfg['epochs']}: loss {record['train_loss']:.4f}  "
                              f"train acc {record['train_acc']:.4f}  val acc {record['val_acc']:.4f}  "
                              + (f"val PGD {record['val_pgd_acc']:.4f}  " if guard else "")
                              + f"{record['images_per_s']:.0f} images/s")
    if not main:
        return {"rank": run.where.rank, "world_size": run.where.world_size}
    extra: dict[str, Any] = {"distributed": run.distributed_info()}
    if guard is not None:
        extra["adversarial"] = guard.card()
    if selector is not None and not (guard is not None and guard.stopped):  # a collapse restored its own best
        message = selector.restore(state.model)
        if message:
            run.console.print(message, markup=False, highlight=False, soft_wrap=True)
        extra["selection"] = selector.card()
    return write_model_card(run.recipe, run.run_dir, model, seed=run.seed, device=run.device, splits=run.splits,
                            started=started, console=run.console, extra=extra)


@contextmanager
def _resume_hint_on_interrupt(run: Run) -> Iterator[None]:
    """On Ctrl-C / SIGTERM: say where the checkpoint is and how to resume; always leave as ``Interrupted``."""
    try:
        yield
    except KeyboardInterrupt as e:
        ckpt = run.run_dir / CHECKPOINT
        ws = run.where.world_size
        resume_cmd = (f"torchrun --nproc_per_node={ws} -m robust_uatt train --resume {shlex.quote(str(run.run_dir))} "
                      f"(on one node; several nodes: the same world size, {ws}, in all)" if run.where.distributed else
                      f"robust-uatt train {shlex.quote(run.recipe.name)} --resume {shlex.quote(str(run.run_dir))}")
        if ckpt.exists():
            run.console.print(f"interrupted: checkpoint saved in {ckpt}\nresume with: {resume_cmd}",
                              markup=False, highlight=False, soft_wrap=True)
        else:
            run.console.print("interrupted before the first checkpoint: nothing to resume", markup=False)
        if not isinstance(e, Interrupted):
            raise Interrupted(signal.SIGINT) from None
        raise


def train_one_epoch(run: Run, state: TrainState, stop: StopSignals) -> dict[str, Any]:
    """Run epoch ``state.epoch`` from step ``state.step_in_epoch``, then validate; returns its metrics record.

    Each epoch's order and augmentation come from (seed, epoch), so a resumed run replays them exactly; a run
    resumed mid-epoch continues the data generator and the running sums where the checkpoint left them."""
    t, epoch, first = run.cfg, state.epoch, state.step_in_epoch
    train_set, steps = run.splits[0], run.steps_per_epoch
    state.model.train()
    state.gen.manual_seed(run.seed * 1_000_003 + epoch)
    perm = torch.randperm(len(train_set), generator=state.gen)
    if run.where.distributed:
        perm = _sampler_order(perm, run, epoch)
    if first == 0:
        torch.manual_seed(_rank_seed(run.seed * 1_000_003 + epoch, run.where.rank))
    elif state.data_rng is not None:
        state.gen.set_state(state.data_rng)  # the augmentation stream continues where the checkpoint left it
    resumed = state.partial if first else {}
    sums: dict[str, float] = dict(resumed.get("sums", {}))
    seen, correct, t0 = int(resumed.get("seen", 0)), float(resumed.get("correct", 0.0)), time.perf_counter()
    seen_before, new_here = seen, 0
    with progress_bar(run.console, "loss {task.fields[loss]:.4f}", "acc {task.fields[acc]:.3f}",
                      "{task.fields[ips]:.0f} img/s") as progress:
        task = progress.add_task(f"epoch {epoch + 1}/{t['epochs']}", total=steps, completed=first,
                                 loss=float("nan"), acc=float("nan"), ips=0.0)
        for step_in_epoch in range(first, steps):
            idx = perm[step_in_epoch * t["batch_size"]:(step_in_epoch + 1) * t["batch_size"]]
            loss, terms, batch_correct = train_step(run, state, train_set, idx, epoch * steps + step_in_epoch)
            n = len(idx) // run.where.world_size  # this rank's share of the global batch
            seen += n
            new_here += n
            correct += batch_correct
            sums["loss"] = sums.get("loss", 0.0) + loss * n
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * n
            ips = new_here / max(1e-9, time.perf_counter() - t0)
            progress.update(task, advance=1, loss=sums["loss"] / seen, acc=correct / seen, ips=ips)
            if not run.console.is_terminal and (step_in_epoch + 1) % max(1, steps // 10) == 0:
                run.console.print(f"epoch {epoch + 1} step {step_in_epoch + 1}/{steps}: loss "
                                  f"{sums['loss'] / seen:.4f} acc {correct / seen:.3f} {ips:.0f} img/s")
            done = step_in_epoch + 1
            if run.where.distributed and stop.requested is None and _any_rank_stopping(stop):
                stop.requested = signal.SIGTERM  # another rank was signalled: checkpoint at this same step
            if stop.requested is not None or (t["checkpoint_every"] and done % t["checkpoint_every"] == 0
                                              and done < steps):
                if run.where.distributed:  # rank 0's checkpoint holds every rank's running sums
                    seen, correct, sums = _fold_sums(run, seen, correct, sums)
                state.step_in_epoch, state.partial = done, {"seen": seen, "correct": correct, "sums": sums}
                run.checkpoint(state)
                stop.check()
    train_seconds = time.perf_counter() - t0
    if run.where.distributed:
        seen, correct, sums = _fold_sums(run, seen, correct, sums, everywhere=True)
        new_here = int(distributed.all_reduce_(torch.tensor([float(new_here)], dtype=torch.float64),
                                               "summing the epoch's images")[0])
    val_acc = _validate(run, state.model)
    return {"epoch": epoch + 1, "step": (epoch + 1) * steps, "lr": lr_at((epoch + 1) * steps - 1, run.total_steps, t),
            **{("train_loss" if k == "loss" else k): v / max(1, seen) for k, v in sums.items()},
            "train_acc": correct / max(1, seen), "val_acc": val_acc,
            "images_per_s": new_here / train_seconds, "epoch_seconds": train_seconds}


def _sampler_order(perm: torch.Tensor, run: Run, epoch: int) -> torch.Tensor:
    """The epoch's global order under DDP: ``perm`` padded to a multiple of the world size as torch's seeded
    ``DistributedSampler`` pads it; rank r's positions r, r + W, ... are exactly that sampler's indices for rank r
    (checked), so global batch b is split across ranks and is the one-process run's batch b when W divides the data."""
    from torch.utils.data import DistributedSampler

    w, r = run.where.world_size, run.where.rank
    padded = torch.cat([perm, perm[:run.epoch_size - len(perm)]])
    sampler = DistributedSampler(range(len(perm)), num_replicas=w, rank=r, shuffle=True,
                                 seed=run.seed * 1_000_003, drop_last=False)
    sampler.set_epoch(epoch)
    if list(sampler) != padded[r::w].tolist():
        raise RuntimeError("the epoch order differs from torch's DistributedSampler")  # a torch change: a bug here
    return padded


def _any_rank_stopping(stop: StopSignals) -> bool:
    flag = torch.tensor([0.0 if stop.requested is None else 1.0])
    return bool(distributed.all_reduce_(flag, "agreeing on a stop", op="max")[0] > 0)


def _fold_sums(run: Run, seen: int, correct: float, sums: dict[str, float], everywhere: bool = False
               ) -> tuple[int, float, dict[str, float]]:
    """All ranks' running sums, added up: on rank 0 only (``everywhere=False``: the others restart from zero, so a
    later fold counts nothing twice) or on every rank (the epoch's end)."""
    keys = sorted(sums)
    vec = torch.tensor([float(seen), correct, *(sums[k] for k in keys)], dtype=torch.float64)
    distributed.all_reduce_(vec, "summing the ranks' training metrics")
    if everywhere or run.where.is_main:
        return int(vec[0]), float(vec[1]), {k: float(v) for k, v in zip(keys, vec[2:])}
    return 0, 0.0, {k: 0.0 for k in keys}


def _validate(run: Run, model: nn.Module) -> float:
    """Validation accuracy; under DDP each rank judges a contiguous share of the validation set."""
    val_set, batch = run.splits[1], run.cfg["eval_batch_size"]
    if not run.where.distributed:
        return accuracy(model, val_set.x, val_set.y, batch, run.device)
    w, r, n = run.where.world_size, run.where.rank, len(val_set)
    lo, hi = r * n // w, (r + 1) * n // w
    hits = round(accuracy(model, val_set.x[lo:hi], val_set.y[lo:hi], batch, run.device) * (hi - lo)) if hi > lo else 0
    total = distributed.all_reduce_(torch.tensor([float(hits)], dtype=torch.float64), "summing validation hits")
    return float(total[0]) / n if n else float("nan")


def train_step(run: Run, state: TrainState, train_set: Split, idx: torch.Tensor,
               global_step: int) -> tuple[float, dict[str, float], float]:
    """One optimizer step on the examples ``idx``: (loss, loss terms, correct predictions in the batch).

    The loss is the model's own ``objective`` where it has one (the attention model), else cross-entropy; with
    adversarial training, that loss on the adversarial batch (``adversarial.adversarial_loss``)."""
    t, model, device = run.cfg, state.model, run.device
    xb = train_set.x[idx]
    yb = train_set.y[idx]
    if run.recipe.data["augment"] == "crop-flip":
        xb = augment_crop_flip(xb, state.gen)  # the whole global batch: every rank draws what one process draws
    if run.where.distributed:  # this rank's positions of the global batch (its DistributedSampler indices)
        xb, yb = xb[run.where.rank::run.where.world_size], yb[run.where.rank::run.where.world_size]
    xb = to_float(xb.to(device, non_blocking=True))
    yb = yb.to(device, non_blocking=True)
    for group in state.opt.param_groups:
        group["lr"] = lr_at(global_step, run.total_steps, t)
    with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext():
        if run.ddp is not None:
            with distributed.collective(f"the DDP forward of step {global_step}"):
                loss, terms, batch_correct = run.ddp(xb, yb)
        else:
            loss, terms, batch_correct = step_loss(model, run, xb, yb, state.gen)
    if not torch.isfinite(loss):
        ckpt = run.run_dir / CHECKPOINT
        raise TrainingDiverged(
            f"non-finite loss ({float(loss.detach())}) at step {global_step} (epoch {state.epoch + 1}); "
            f"the last good checkpoint is {ckpt if ckpt.exists() else 'none (first epoch)'}")
    state.opt.zero_grad(set_to_none=True)
    with distributed.collective(f"the gradient all-reduce of step {global_step}") if run.ddp is not None \
            else nullcontext():
        loss.backward()
    if t["grad_clip"]:
        nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
    state.opt.step()
    if hasattr(model, "after_optimizer_step"):
        model.after_optimizer_step()
    return float(loss.detach()), terms, batch_correct


__all__ = ["train", "train_one_epoch", "train_step", "TrainState", "StopSignals", "Interrupted", "TrainingDiverged",
           "lr_at", "make_optimizer", "split_data", "config_versions", "CARD", "CHECKPOINT", "CONFIG", "METRICS",
           "WEIGHTS"]
