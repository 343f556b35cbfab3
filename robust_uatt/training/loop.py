"""The training loop, short enough to read in one sitting.

Tricks, each named: uint8 data held in memory and augmented on tensors (no per-image Python); channels_last VGG
(set in the model); one-cycle learning rate computed from the step number (no scheduler state to save); bf16
autocast on CUDA only (bf16 on a CPU without AMX is ~10x slower); a model may define ``training_loss(x, y)``
(the attention model's Eq. 14 + Q loss) and ``after_optimizer_step()`` (its frozen target sync); everything else
is trained with cross-entropy.

Resumable: ``checkpoint.safetensors`` holds weights, optimizer state and both RNG states at an epoch end (and every
``checkpoint_every`` steps), so a resumed run replays the exact same batches. Crash-safe: every file is written
atomically (io.py), one process at a time holds the run directory (io.RunLock), Ctrl-C or SIGTERM checkpoints
after the current step and prints the resume command (a second Ctrl-C stops at once, keeping the last checkpoint),
and on the CPU deterministic algorithms are on, so a run killed with SIGKILL and resumed ends bit-identical to an
uninterrupted one. A non-finite loss, or non-finite weights about to be checkpointed, stop the run
(``TrainingDiverged``) and keep the last good checkpoint.
"""

from __future__ import annotations

import math
import shlex
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from robust_uatt.data.datasets import Split, augment_crop_flip, load_split, to_float
from robust_uatt.utils.errors import UserError
from robust_uatt.evaluation.predict import accuracy
from robust_uatt.utils.files import (
    RunLock,
    append_jsonl,
    atomic_write_text,
    load_state_into,
    load_tensors,
    read_json,
    remove_stale_temps,
    save_tensors,
    write_json,
)
from robust_uatt.utils.runtime import configure, seed_all, versions
from robust_uatt.utils.runtime import deterministic as deterministic_mode
from robust_uatt.models.zoo import Recipe, count_params, create_model

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
CARD = "model_card.json"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops, the last good checkpoint stays."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during training; ``signum`` gives the CLI its exit code (128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def lr_at(step: int, total: int, cfg: dict[str, Any]) -> float:
    lr = float(cfg["lr"])
    if cfg["schedule"] == "constant":
        return lr
    if cfg["schedule"] == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * step / total))
    warm = max(1, int(cfg["warmup"] * total))
    return lr * (step + 1) / warm if step < warm else lr * max(0.0, (total - step) / max(1, total - warm))


def make_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                           weight_decay=cfg["weight_decay"])


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


# ---- checkpoint state ------------------------------------------------------------------------------------------

def _pack(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> tuple[dict, dict]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.data"] = gen.get_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors, {"optim_scalars": scalars, "param_groups": opt.state_dict()["param_groups"]}


def _unpack(tensors: dict, meta: dict, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
            where: str) -> None:
    """Restore a checkpoint; one that does not fit this run (or was tampered with) is a UserError."""
    load_state_into(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, where)
    try:
        _unpack_state(tensors, meta, opt, gen)
        for key in ("epoch", "step_in_epoch", "metrics_lines"):
            if not isinstance(meta.get(key), int) or meta[key] < 0:
                raise ValueError(f"bad or missing '{key}'")
        if not isinstance(meta.get("partial", {}), dict):
            raise ValueError("bad 'partial'")
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        raise UserError(f"{where}: not a resumable checkpoint of this run ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _unpack_state(tensors: dict, meta: dict, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, values in meta.get("optim_scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    gen.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` lines (those the checkpoint accounts for), atomically."""
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)[:keep]
        atomic_write_text(path, "".join(lines))


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


# ---- the loop --------------------------------------------------------------------------------------------------

def train(recipe: Recipe, run_dir: Path, *, seed: int, device: torch.device, data_dir: str | None = None,
          resume: bool = False, download: bool = True, console: Console | None = None,
          deterministic: bool | None = None) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir``; returns the model card. ``resume`` continues from its checkpoint.

    Data and model are checked before ``run_dir`` is touched, so a user error writes nothing. A fresh run that
    fails before its first checkpoint (bad input, full disk) removes the directory it created.
    ``deterministic``: see ``runtime.deterministic`` (None = on for the CPU only).
    """
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    data = split_data(recipe, data_dir, download)
    create_model(recipe)  # a recipe whose model cannot be built fails here, before anything is written
    created = not resume and not run_dir.exists()
    lock = RunLock(run_dir).acquire()
    try:
        remove_stale_temps(run_dir)  # left by a writer killed mid-write; we hold the lock, so none is live
        with deterministic_mode(device, deterministic):
            return _train_locked(recipe, run_dir, seed, device, data_dir, data, resume, console)
    except (UserError, OSError):
        if created and not (run_dir / CHECKPOINT).exists():
            for f in (run_dir / CONFIG, run_dir / METRICS):
                f.unlink(missing_ok=True)
            remove_stale_temps(run_dir)
        raise
    finally:
        lock.release()
        if created and not any(run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)


def _train_locked(recipe: Recipe, run_dir: Path, seed: int, device: torch.device, data_dir: str | None,
                  data: tuple[Split, Split, Split], resume: bool, console: Console) -> dict[str, Any]:
    configure(device)
    t = recipe.train
    train_set, val_set, test_set = data
    if device.type == "cuda":  # the uint8 training set (150 MB for CIFAR-10) lives on the GPU: no per-step copies
        train_set = Split(train_set.x.to(device), train_set.y.to(device), train_set.source, train_set.lossless)
    seed_all(seed)
    model = create_model(recipe).to(device)
    opt = make_optimizer(model, t)
    gen = torch.Generator()
    steps_per_epoch = math.ceil(len(train_set) / t["batch_size"])
    total_steps = steps_per_epoch * t["epochs"]
    start_epoch, start_step, metrics_lines = 0, 0, 0
    saved_data_rng: torch.Tensor | None = None
    partial: dict[str, Any] = {}  # running sums of an epoch interrupted mid-way
    ckpt_path, metrics_path = run_dir / CHECKPOINT, run_dir / METRICS

    if resume:
        tensors, meta = load_tensors(ckpt_path)
        _unpack(tensors, meta, model, opt, gen, str(ckpt_path))
        saved_data_rng = gen.get_state()
        partial = meta.get("partial", {})
        start_epoch, start_step, metrics_lines = meta["epoch"], meta["step_in_epoch"], meta["metrics_lines"]
        _truncate_lines(metrics_path, metrics_lines)
        console.print(f"resuming {run_dir} at epoch {start_epoch + 1}, step {start_step}")
    else:
        write_json(run_dir / CONFIG, {"recipe": recipe.to_dict(), "seed": seed, "device": str(device),
                                      "data_dir": data_dir, "argv": sys.argv, "versions": versions()})
        atomic_write_text(metrics_path, "")

    def save_checkpoint(epoch: int, step_in_epoch: int, running: dict[str, Any] | None = None) -> None:
        if not _all_finite(model):  # never replace the last good checkpoint with a diverged one
            raise TrainingDiverged(
                f"non-finite weights after step {epoch * steps_per_epoch + step_in_epoch - 1} (epoch "
                f"{epoch + (1 if step_in_epoch else 0)}); the last good checkpoint is "
                f"{ckpt_path if ckpt_path.exists() else 'none (nothing was checkpointed yet)'}")
        tensors, meta = _pack(model, opt, gen)
        meta.update(epoch=epoch, step_in_epoch=step_in_epoch, metrics_lines=metrics_lines, seed=seed,
                    recipe=recipe.to_dict(), partial=running or {})
        save_tensors(ckpt_path, tensors, meta)

    stop: dict[str, int | None] = {"now": None}  # the signal number once Ctrl-C / SIGTERM arrived
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in handled}

    def on_signal(signum: int, frame: Any) -> None:
        if stop["now"] is not None:
            raise Interrupted(signum)  # the second one: stop at once; the last checkpoint stays whole (atomic)
        stop["now"] = signum  # the first one: finish the current step, checkpoint, then leave

    for sig in handled:
        signal.signal(sig, on_signal)
    use_amp = device.type == "cuda"
    custom_loss = getattr(model, "training_loss", None)
    after_step = getattr(model, "after_optimizer_step", None)
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, t["epochs"]):
            model.train()
            # Each epoch's order and augmentation come from (seed, epoch): a resumed run replays them exactly.
            gen.manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(len(train_set), generator=gen)
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                torch.manual_seed(seed * 1_000_003 + epoch)
            elif saved_data_rng is not None:
                gen.set_state(saved_data_rng)  # the augmentation stream continues where the checkpoint left it
            resumed = partial if first else {}
            sums: dict[str, float] = dict(resumed.get("sums", {}))
            seen, correct, t0 = int(resumed.get("seen", 0)), float(resumed.get("correct", 0.0)), time.perf_counter()
            seen_before = seen
            with _progress(console) as progress:
                task = progress.add_task(f"epoch {epoch + 1}/{t['epochs']}", total=steps_per_epoch, completed=first,
                                         loss=float("nan"), acc=float("nan"), ips=0.0)
                for step_in_epoch in range(first, steps_per_epoch):
                    idx = perm[step_in_epoch * t["batch_size"]:(step_in_epoch + 1) * t["batch_size"]]
                    xb = train_set.x[idx]
                    if recipe.data["augment"] == "crop-flip":
                        xb = augment_crop_flip(xb, gen)
                    xb = to_float(xb.to(device, non_blocking=True))
                    yb = train_set.y[idx].to(device, non_blocking=True)
                    global_step = epoch * steps_per_epoch + step_in_epoch
                    for group in opt.param_groups:
                        group["lr"] = lr_at(global_step, total_steps, t)
                    with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext():
                        if custom_loss is not None:
                            loss, terms = custom_loss(xb, yb)
                            batch_correct = terms.get("reward_mean", float("nan")) * len(yb)
                        else:
                            logits = model(xb)
                            loss = F.cross_entropy(logits.float(), yb, label_smoothing=t["label_smoothing"])
                            terms = {}
                            batch_correct = float((logits.argmax(1) == yb).sum())
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(
                            f"non-finite loss ({float(loss.detach())}) at step {global_step} (epoch {epoch + 1}); "
                            f"the last good checkpoint is {ckpt_path if ckpt_path.exists() else 'none (first epoch)'}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if t["grad_clip"]:
                        nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
                    opt.step()
                    if after_step is not None:
                        after_step()
                    n = len(yb)
                    seen += n
                    correct += batch_correct
                    sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v) * n
                    ips = (seen - seen_before) / max(1e-9, time.perf_counter() - t0)
                    progress.update(task, advance=1, loss=sums["loss"] / seen, acc=correct / seen, ips=ips)
                    if not console.is_terminal and (step_in_epoch + 1) % max(1, steps_per_epoch // 10) == 0:
                        console.print(f"epoch {epoch + 1} step {step_in_epoch + 1}/{steps_per_epoch}: loss "
                                      f"{sums['loss'] / seen:.4f} acc {correct / seen:.3f} {ips:.0f} img/s")
                    done = step_in_epoch + 1
                    if stop["now"] is not None or (t["checkpoint_every"] and done % t["checkpoint_every"] == 0
                                                   and done < steps_per_epoch):
                        save_checkpoint(epoch, done, {"seen": seen, "correct": correct, "sums": sums})
                        if stop["now"] is not None:
                            raise Interrupted(stop["now"])
            train_seconds = time.perf_counter() - t0
            val_acc = accuracy(model, val_set.x, val_set.y, t["eval_batch_size"], device)
            record = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                      "lr": lr_at((epoch + 1) * steps_per_epoch - 1, total_steps, t),
                      **{("train_loss" if k == "loss" else k): v / max(1, seen) for k, v in sums.items()},
                      "train_acc": correct / max(1, seen), "val_acc": val_acc,
                      "images_per_s": (seen - seen_before) / train_seconds,
                      "epoch_seconds": train_seconds}
            append_jsonl(metrics_path, record)
            metrics_lines += 1
            save_checkpoint(epoch + 1, 0)
            if stop["now"] is not None:  # the signal came during validation: this checkpoint is the one
                raise Interrupted(stop["now"])
            console.print(f"epoch {epoch + 1}/{t['epochs']}: loss {record['train_loss']:.4f}  "
                          f"train acc {record['train_acc']:.4f}  val acc {val_acc:.4f}  "
                          f"{record['images_per_s']:.0f} images/s")
    except KeyboardInterrupt as e:
        resume_cmd = f"robust-uatt train {shlex.quote(recipe.name)} --resume {shlex.quote(str(run_dir))}"
        if ckpt_path.exists():
            console.print(f"interrupted: checkpoint saved in {ckpt_path}\nresume with: {resume_cmd}",
                          markup=False, highlight=False, soft_wrap=True)
        else:
            console.print("interrupted before the first checkpoint: nothing to resume", markup=False)
        if not isinstance(e, Interrupted):
            raise Interrupted(signal.SIGINT) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return _finish(recipe, run_dir, model, seed, device, train_set, val_set, test_set, started, console)


def _finish(recipe: Recipe, run_dir: Path, model: nn.Module, seed: int, device: torch.device, train_set: Split,
            val_set: Split, test_set: Split, started: float, console: Console) -> dict[str, Any]:
    t = recipe.train
    records = _read_metrics(run_dir / METRICS)
    test_acc = accuracy(model, test_set.x, test_set.y, t["eval_batch_size"], device)
    card: dict[str, Any] = {
        "name": recipe.name, "description": recipe.description, "preset": recipe.preset,
        "recipe": recipe.to_dict(), "params": count_params(model), "seed": seed, "device": str(device),
        "data": {"dataset": recipe.dataset, "train_source": train_set.source, "train_n": len(train_set),
                 "train_lossless_fraction": train_set.lossless_fraction(), "test_source": test_set.source,
                 "test_n": len(test_set), "test_lossless_fraction": test_set.lossless_fraction(),
                 "validation": "holdout" if recipe.data["holdout"] else "test split", "val_n": len(val_set)},
        "accuracy": {"test": test_acc, "val_last_epoch": records[-1]["val_acc"] if records else None},
        "train_images_per_s": (sum(r["images_per_s"] for r in records) / len(records)) if records else None,
        "epochs": t["epochs"], "versions": config_versions(run_dir),
    }
    if test_set.lossless is not None and bool(test_set.lossless.any()) and not bool(test_set.lossless.all()):
        exact = test_set.subset(test_set.lossless)
        card["accuracy"]["test_lossless"] = accuracy(model, exact.x, exact.y, t["eval_batch_size"], device)
        card["accuracy"]["test_lossless_n"] = len(exact)
    config = read_json(run_dir / CONFIG)
    card["wall_seconds_this_session"] = time.perf_counter() - started
    card["command"] = " ".join(shlex.quote(a) for a in config.get("argv", []))
    state = {k: v for k, v in model.state_dict().items()}
    # The card first, the weights last: model.safetensors is what marks a run finished (a kill in between leaves a
    # resumable run, never a "finished" one without its card).
    write_json(run_dir / CARD, card)
    save_tensors(run_dir / WEIGHTS, state, {"recipe": recipe.to_dict(), "seed": seed, "kind": "robust-uatt model"})
    console.print(f"done: test accuracy {test_acc:.4f} on {len(test_set)} images; weights in {run_dir / WEIGHTS}")
    return card


def config_versions(run_dir: Path) -> dict[str, Any]:
    """The versions (git commit included) stamped when the run started: the code that trained the weights, even if
    HEAD moved before the run finished."""
    try:
        return dict(read_json(run_dir / CONFIG)["versions"])
    except Exception:  # a run dir without a readable config (should not happen): stamp what runs now
        return versions()


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("acc {task.fields[acc]:.3f}"),
        TextColumn("{task.fields[ips]:.0f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )
