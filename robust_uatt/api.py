"""The public API: everything a CLI command does is one call here (and every call works without the CLI).

    import robust_uatt as ru
    model = ru.load_model("cifar10-vgg")                    # zoo name, run directory, .safetensors, or factory
    result = ru.evaluate(model, x, y, eps=8 / 255, suite="quick")
    print(result.robust_accuracy, result.valid)             # worst case per example, sanity-check verdict
    result.save("runs/attacks/mine")                        # results.json + results.md

Inputs are images in [0, 1] (float) or [0, 255] (uint8), NCHW, with integer labels; eps is an L-inf radius in
pixel units of [0, 1] images (a float or text such as "8/255").
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from robust_uatt.attacks import ATTACKS, Attack, build_attack
from robust_uatt.benchmark.compare import Report, default_leaderboard, load_results, parse_result, read_leaderboard
from robust_uatt.benchmark.compare import compare as compare_results
from robust_uatt.benchmark.seeds import SeedGroup, group_by_seed
from robust_uatt.benchmark.zoo import ZooBenchmark, result_dir, zoo_models
from robust_uatt.data.datasets import DATASETS, Split, load_split
from robust_uatt.evaluation.checks import as_dicts, check_budget, check_model, check_run, gate, timed
from robust_uatt.evaluation.curve import monotone_curve
from robust_uatt.evaluation.harness import (
    DEFAULT_BLOCK,
    PassCounter,
    SuiteOutcome,
    merge_states,
    run_suite,
    shard_blocks,
    suite_key,
    summarize,
    write_state,
)
from robust_uatt.evaluation.results import RESULTS_FILE, EvaluationResult
from robust_uatt.evaluation.suites import Suite, SuiteEntry, load_suite, suite_names, with_probes
from robust_uatt.models.outputs import decide, is_sequence
from robust_uatt.models.shipped import shipped_dir, weights_origin
from robust_uatt.models.zoo import count_params, create_model, load_recipe, load_trained, recipe_names
from robust_uatt.training.loop import CHECKPOINT, CONFIG, WEIGHTS
from robust_uatt.training.loop import train as train_recipe
from robust_uatt.utils import distributed
from robust_uatt.utils.eps import parse_eps
from robust_uatt.utils.errors import UserError, unknown_name
from robust_uatt.utils.files import (
    RunLock,
    check_writable,
    load_state_into,
    load_tensors,
    read_json,
    remove_stale_temps,
    safe_component,
    write_json,
)
from robust_uatt.utils.runtime import configure, pin_code_version, resolve_device, seed_all, versions
from robust_uatt.viz.tables import plot_text

CHECK_LEVELS = ("none", "fast", "full")
POLICIES = ("mean", "sample")

# What load_model knows about the models it returned (name, weights, dataset): evaluate() records it.
_ORIGIN: weakref.WeakKeyDictionary[nn.Module, ModelOrigin] = weakref.WeakKeyDictionary()


@dataclass
class ModelOrigin:
    info: dict[str, Any]  # name, spec, weights, kind (robust-uatt, factory, robustbench), preset, recipe
    dataset: str | None
    data_params: dict[str, Any] = field(default_factory=dict)  # the recipe's [data] table (cluttered canvases)


# ------------------------------------------------------------------------------------------------ listing
def list_models() -> list[str]:
    """Zoo names (zoo/<name>.toml recipes) that ``load_model`` and ``train`` accept."""
    return recipe_names()


def list_attacks() -> dict[str, str]:
    """Attack name -> one-line description, for ``attacks=[...]`` and ``make_attack``."""
    return {name: ATTACKS[name].description for name in sorted(ATTACKS)}


def list_suites() -> dict[str, str]:
    """Suite name (attacks/<name>.toml) -> description, for ``suite=...``."""
    return {name: load_suite(name).description for name in suite_names()}


def zoo() -> list[dict[str, Any]]:
    """One row per zoo model: name, dataset, parameter count, presets, description."""
    rows = []
    for name in recipe_names():
        recipe = load_recipe(name)
        rows.append({"name": name, "dataset": recipe.dataset, "params": count_params(create_model(recipe)),
                     "presets": recipe.presets, "description": recipe.description})
    return rows


# ------------------------------------------------------------------------------------------------ models
def load_model(name_or_path: str | None = None, *, factory: str | None = None, checkpoint: str | None = None,
               robustbench: str | None = None, dataset: str | None = None, runs_dir: str | Path = "runs",
               model_dir: str | Path = "models") -> nn.Module:
    """A model in eval mode, mapping [0, 1] images to logits. Exactly one of:

    ``name_or_path``: a zoo name (its newest finished run under ``runs_dir``), a run directory or a .safetensors
    file written by robust-uatt; ``factory="module:function"``: your own nn.Module (weights from ``checkpoint``);
    ``robustbench=NAME``: a RobustBench model from ``model_dir`` (offline). ``dataset`` names the data of a factory
    or RobustBench model (default cifar10).
    """
    chosen = [bool(name_or_path), bool(factory), bool(robustbench)]
    if sum(chosen) != 1:
        raise UserError("name exactly one of --model, --model-factory (with --checkpoint) or --robustbench")
    if name_or_path:
        model, recipe, weights = load_trained(name_or_path, runs_dir)
        info = {"name": recipe.name, "spec": name_or_path, "weights": str(weights), "kind": "robust-uatt",
                "origin": weights_origin(weights), "preset": recipe.preset, "recipe": recipe.to_dict(),
                "train_seed": _train_seed(weights)}
        return _remember(model, ModelOrigin(info, recipe.dataset, recipe.data))
    dataset = dataset or "cifar10"
    if dataset not in DATASETS:
        raise unknown_name("dataset", dataset, DATASETS)
    if factory:
        model = _from_factory(factory, checkpoint)
        return _remember(model, ModelOrigin({"name": factory, "weights": checkpoint, "kind": "factory"}, dataset))
    from robust_uatt.benchmark.robustbench_models import load_robustbench_model

    model = load_robustbench_model(str(robustbench), model_dir, dataset=dataset, threat_model="Linf").eval()
    return _remember(model, ModelOrigin({"name": robustbench, "weights": str(model_dir), "kind": "robustbench"},
                                        dataset))


def _train_seed(weights: Path) -> int | None:
    """The training seed written into robust-uatt weights (runs and shipped files), None if absent."""
    from robust_uatt.utils.files import read_metadata

    seed = read_metadata(weights).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _from_factory(spec: str, checkpoint: str | None) -> nn.Module:
    model = _call_factory(spec)
    if not isinstance(model, nn.Module):
        raise UserError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    if checkpoint:
        tensors, _ = load_tensors(checkpoint)
        load_state_into(model, tensors, checkpoint)
    return model.eval()


def _call_factory(spec: str) -> Any:
    """Import MODULE:FUNCTION and call it: this RUNS THE USER'S CODE (the point of --model-factory). The module is
    looked up on sys.path and in the current directory. Any failure is one line, never a traceback."""
    module_name, sep, func = spec.partition(":")
    if not sep or not _DOTTED.match(module_name) or not func.isidentifier():
        raise UserError(f"--model-factory expects module:function (an absolute module path), got '{spec}'")
    cwd = os.getcwd()  # the installed robust-uatt finds a module next to the user, as `python -m robust_uatt` does
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        factory = getattr(importlib.import_module(module_name), func)
    except Exception as e:  # ImportError, AttributeError, or whatever the module raises while importing
        raise UserError(f"cannot import {spec}: {e.__class__.__name__}: {_first_line(e)}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    if not callable(factory):
        raise UserError(f"--model-factory {spec} is not callable")
    try:
        return factory()
    except Exception as e:
        raise UserError(f"--model-factory {spec} raised {e.__class__.__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


@torch.no_grad()
def _probe(model: nn.Module, data: Split, num_classes: int, device: torch.device, what: str) -> None:
    """Classify two images before anything is written: a model that cannot take them (a wrong factory, a --source
    trained on another dataset) or returns something other than (N, classes) logits is one line, not a traceback
    after the output directory exists."""
    from robust_uatt.data.datasets import to_float

    x = to_float(data.x[:2].to(device))
    was_training = model.training
    try:
        out = model.eval()(x)
    except Exception as e:
        raise UserError(f"{what} cannot classify {tuple(x.shape[1:])} images: {e.__class__.__name__}: "
                        f"{_first_line(e)}") from None
    finally:
        model.train(was_training)
    expected = (len(x), num_classes) if data.y.dim() == 1 else (len(x), num_classes, int(data.y.shape[1]))
    if not torch.is_tensor(out) or tuple(out.shape) != expected:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        shape = ", ".join(["N", *map(str, expected[1:])])
        raise UserError(f"{what} must return logits of shape ({shape}); got {got} for N = {len(x)}")


def _remember(model: nn.Module, origin: ModelOrigin) -> nn.Module:
    _ORIGIN[model] = origin
    return model


def _origin(model: nn.Module) -> ModelOrigin:
    return _ORIGIN.get(model) or ModelOrigin({"name": type(model).__name__, "weights": None, "kind": "module"}, None)


# ------------------------------------------------------------------------------------------------ attacks
def make_attack(name: str, *, eps: float | str, steps: int | None = None, alpha: float | str | None = None,
                seed: int = 0, eot: int = 1, **options: Any) -> Attack:
    """A callable attack: ``x_adv = atk(model, x, y)`` with x (B, C, H, W) in [0, 1] and labels y (B,).

    The call puts the model in eval mode and freezes its parameters, restoring both afterwards; ``alpha`` defaults
    to 2.5 * eps / steps. ``options`` are the attack's own (``list_attacks()``; e.g. ``grad_path="full"``)."""
    return build_attack(name, eps=_radius(eps), alpha=None if alpha is None else _radius(alpha), steps=steps,
                        seed=seed, eot=eot, options=options)


def _radius(value: float | str) -> float:
    return parse_eps(value) if isinstance(value, str) else parse_eps(repr(float(value)))


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class _Plan:
    """Validated arguments of one evaluation."""

    eps: float
    eps_text: str
    alpha: float | None
    suite: Suite
    options: dict[str, Any]
    checks: str
    policy: str
    eot: int | None
    judge_draws: int | None
    cascade: bool
    batch_size: int
    seed: int
    source: str | None


def _plan(eps: float | str, *, suite: str | None, attacks: Sequence[str] | None, steps: int | None,
          alpha: float | str | None, eot: int | None, options: dict[str, Any] | None, source: str | None,
          policy: str, checks: str, cascade: bool, batch_size: int, seed: int, n: int | None,
          judge_draws: int | None = None) -> _Plan:
    for name, value in (("n", n), ("batch_size", batch_size), ("steps", steps), ("eot", eot),
                        ("judge_draws", judge_draws)):
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    eps_text = eps if isinstance(eps, str) else f"{float(eps):g}"
    if policy not in POLICIES:
        raise UserError(f"--policy must be mean or sample, got '{policy}'")
    if checks not in CHECK_LEVELS:
        raise UserError(f"--checks must be none, fast or full, got '{checks}'")
    chosen = _suite(suite, list(attacks) if attacks else ["pgd"], steps, source)
    if checks != "none":
        chosen = with_probes(chosen)  # black-box <= white-box needs both kinds in every gating set
    return _Plan(_radius(eps), eps_text, None if alpha is None else _radius(alpha), chosen, dict(options or {}),
                 checks, policy, eot, judge_draws, cascade, batch_size, seed, source)


def _suite(name: str | None, attacks: list[str], steps: int | None, source: str | None) -> Suite:
    """A suite by name, or one made of the given attacks (the paper-protocol role for pgd-eq14)."""
    if name:
        suite = load_suite(name)
        if steps:
            raise UserError("--steps applies to a single --attack; a suite sets each attack's steps")
    else:
        for attack in attacks:
            if attack not in ATTACKS:
                raise unknown_name("attack", attack, ATTACKS)
        suite = Suite(",".join(attacks), "; ".join(ATTACKS[a].description for a in attacks),
                      [SuiteEntry(a, steps, None, "paper" if a == "pgd-eq14" else "") for a in attacks])
    sourceless = [e for e in suite.entries if e.name == "transfer" and not e.options.get("source")]
    if sourceless and not source:
        raise UserError("the transfer attack needs a source model: --source MODEL (zoo name, run directory or file)")
    for e in sourceless:
        e.options = {**e.options, "source": source}
    if source and not sourceless:
        suite.entries.append(SuiteEntry("transfer", None, None, "", {"source": source}))
    if len(suite.entries) > 1 and any(not ATTACKS[e.name].bounded for e in suite.entries):
        raise UserError("unbounded attacks (cw) measure minimal perturbations; run them alone, not in a suite")
    return suite


def _build_attacks(plan: _Plan, num_classes: int, eot: int, device: torch.device, runs_dir: str | Path,
                   data: Split, dataset: str | None) -> list[Attack]:
    attacks = []
    for entry in plan.suite.entries:
        cls = ATTACKS[entry.name]
        options = {**entry.options, **{k: v for k, v in plan.options.items()
                                       if k in cls.options and k not in cls.internal_options}}
        if entry.name == "transfer":
            source, source_recipe, _ = load_trained(options["source"], runs_dir)
            if dataset is not None and source_recipe.dataset != dataset:
                raise UserError(f"--source {options['source']} is a {source_recipe.dataset} model; this attack runs "
                                f"on {dataset} images")
            options["source_model"] = source.to(device).eval().requires_grad_(False)
            _probe(options["source_model"], data, num_classes, device, f"--source {options['source']}")
        if entry.name == "autoattack":
            options["n_classes"] = num_classes
        attacks.append(build_attack(entry.name, eps=plan.eps, alpha=plan.alpha, steps=entry.steps, seed=plan.seed,
                                    eot=entry.eot or eot, options=options))
    unused = set(plan.options) - {k for e in plan.suite.entries for k in ATTACKS[e.name].options
                                  if k not in ATTACKS[e.name].internal_options}
    if unused:
        raise UserError(f"--option {sorted(unused)[0]} is not an option of any attack in the run")
    return attacks


def evaluate(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
             eps: float | str = 8 / 255, suite: str | None = None, attacks: Sequence[str] | None = None,
             steps: int | None = None, alpha: float | str | None = None, eot: int | None = None,
             options: dict[str, Any] | None = None, source: str | None = None, policy: str = "mean",
             judge_draws: int | None = None, checks: str = "fast", cascade: bool = True, n: int | None = None,
             batch_size: int = 250,
             device: str | torch.device = "auto", seed: int = 0, state_dir: str | Path | None = None,
             save: bool = False, out: str | Path | None = None, runs_dir: str | Path = "runs",
             data_dir: str | None = None, download: bool = True, console: Console | None = None,
             command: str | None = None, block: int = DEFAULT_BLOCK,
             merge: Sequence[str | Path] | None = None) -> EvaluationResult:
    """Attack ``model`` with a suite (or a list of attacks) at radius ``eps``; worst case per example.

    Data: images ``x`` (N, C, H, W) in [0, 1] (float) or [0, 255] (uint8) and labels ``y`` (N,); without them, the
    first ``n`` test images of the model's dataset (a model from ``load_model``). ``checks``: "none", "fast" or
    "full" sanity checks; a failed gating check makes the result INVALID (``result.valid``). ``policy``: "sample"
    attacks an attention model's stochastic policy (EOT ``eot``, default 8; every clean and adversarial judgement a
    strict majority of ``judge_draws`` passes, default 9, recorded in the result). ``options``: attack options, each
    given to the attacks that take it (e.g. ``{"grad_path": "full"}``). ``source``: add a transfer attack from that
    model. ``state_dir``: resumable state (state.json; a rerun recomputes only unfinished batches). ``save``/``out``:
    write results.json + results.md to ``out`` (default RUNS/attacks/<model>/<time>-<suite>), refusing to overwrite.

    Scaling out: ``block`` points form one evaluation block (the cascade runs per block, so results do not depend on
    how many processes share the work); ``evaluate_shard`` runs one shard, ``merge=[shard dirs]`` joins finished
    shards (same arguments otherwise) and runs the checks. Under torchrun (WORLD_SIZE > 1) every rank evaluates its
    shard and rank 0 gathers, checks and writes the result; ranks other than 0 return None.
    """
    prep = _prepare(model, x, y, eps=eps, suite=suite, attacks=attacks, steps=steps, alpha=alpha, eot=eot,
                    options=options, source=source, policy=policy, judge_draws=judge_draws, checks=checks,
                    cascade=cascade, n=n, batch_size=batch_size, device=device, seed=seed, runs_dir=runs_dir,
                    data_dir=data_dir, download=download, block=block)
    if merge is not None and not merge:
        raise UserError("--merge needs the shard directories to join")
    if distributed.launch().distributed and merge is None:
        return _evaluate_distributed(prep, save=save, out=out, runs_dir=runs_dir, console=console, command=command)
    if save or out is not None:
        out = _default_out(prep, out, runs_dir)
        with _locked_output(out, RESULTS_FILE):  # a restart after a kill resumes from state.json
            result = _run(*prep.run_args(), out, console, command, block=prep.block, merge=merge)
            result.save(out)
        return result
    if merge is not None and state_dir is None:
        raise UserError("a merge writes the joined state: give --out (or state_dir)")
    return _run(*prep.run_args(), state_dir, console, command, block=prep.block, merge=merge)


def evaluate_shard(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
                   shard: str | tuple[int, int], out: str | Path, console: Console | None = None,
                   **kwargs: Any) -> Path:
    """Evaluate shard ``"i/k"`` of the evaluation ``evaluate(model, x, y, **kwargs)`` would run, into ``out``
    (its resumable state.json; rerun to resume); returns that file. Shards need no shared filesystem: copy the
    finished shard directories to one place and pass them to ``evaluate(..., merge=[...])`` with the same
    arguments. The shards' per-example outcomes are exactly those of the one-process run."""
    index, count = parse_shard(shard)
    unknown = set(kwargs) - _SHARD_KWARGS
    if unknown:
        raise UserError(f"evaluate_shard takes no {sorted(unknown)[0]}")
    prep = _prepare(model, x, y, **kwargs)
    out = Path(out)
    check_writable(out)
    with _locked_output(out, RESULTS_FILE):
        _run_shard(prep, (index, count), out / "state.json", console)
    return out / "state.json"


_SHARD_KWARGS = {"eps", "suite", "attacks", "steps", "alpha", "eot", "options", "source", "policy", "judge_draws",
                 "checks", "cascade", "n", "batch_size", "device", "seed", "runs_dir", "data_dir", "download",
                 "block"}


def parse_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``"i/k"`` (shard i of k, 0 <= i < k) -> (i, k); anything else is a UserError."""
    if isinstance(spec, tuple):
        i, k = spec
    else:
        left, sep, right = str(spec).partition("/")
        try:
            i, k = int(left), int(right)
        except ValueError:
            i, k, sep = 0, 0, ""
        if not sep:
            raise UserError(f"--shard expects i/k (shard i of k, counted from 0), got '{spec}'")
    if not (isinstance(i, int) and isinstance(k, int) and 0 <= i < k):
        raise UserError(f"--shard i/k needs 0 <= i < k, got {i}/{k}")
    return i, k


@dataclass
class _Prepared:
    """An evaluation checked and built, before anything is written."""

    model: nn.Module
    data: Split
    plan: _Plan
    attacks: list[Attack]
    origin: ModelOrigin
    num_classes: int
    device: torch.device
    block: int

    def run_args(self) -> tuple:
        return self.model, self.data, self.plan, self.attacks, self.origin, self.num_classes, self.device


def _prepare(model: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None, *, eps: float | str = 8 / 255,
             suite: str | None = None, attacks: Sequence[str] | None = None, steps: int | None = None,
             alpha: float | str | None = None, eot: int | None = None, options: dict[str, Any] | None = None,
             source: str | None = None, policy: str = "mean", judge_draws: int | None = None, checks: str = "fast",
             cascade: bool = True, n: int | None = None, batch_size: int = 250, device: str | torch.device = "auto",
             seed: int = 0, runs_dir: str | Path = "runs", data_dir: str | None = None, download: bool = True,
             block: int = DEFAULT_BLOCK) -> _Prepared:
    pin_code_version()  # results stamp the commit this process started from
    plan = _plan(eps, suite=suite, attacks=attacks, steps=steps, alpha=alpha, eot=eot, options=options,
                 source=source, policy=policy, checks=checks, cascade=cascade, batch_size=batch_size, seed=seed, n=n,
                 judge_draws=judge_draws)
    if not isinstance(block, int) or block <= 0:
        raise UserError(f"--block must be a positive integer, got {block}")
    device = distributed.device_for(resolve_device(str(device)), distributed.launch())
    origin = _origin(model)
    stochastic = policy == "sample"
    if hasattr(model, "policy"):
        model.policy = policy
    elif stochastic:
        raise UserError(f"--policy sample applies to attention models; {origin.info['name']} has no policy")
    data = _data(origin, x, y, n if n is not None else (None if x is not None else 1000), data_dir, download)
    num_classes = DATASETS[origin.dataset].num_classes if origin.dataset in DATASETS else _num_classes(model, data)
    _probe(model.to(device), data, num_classes, device, str(origin.info["name"]))
    built = _build_attacks(plan, num_classes, eot or (8 if stochastic else 1), device, runs_dir, data,
                           origin.dataset)
    _check_sequence_support(built, data)
    return _Prepared(model, data, plan, built, origin, num_classes, device, block)


def _default_out(prep: _Prepared, out: str | Path | None, runs_dir: str | Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out is not None else Path(runs_dir) / "attacks" / safe_component(prep.origin.info["name"]) / \
        safe_component(f"{stamp}-{prep.plan.suite.name}")
    if (out / RESULTS_FILE).exists():
        raise UserError(f"{out}/{RESULTS_FILE} exists; choose another --out")
    check_writable(out)
    return out


def _evaluate_distributed(prep: _Prepared, *, save: bool, out: str | Path | None, runs_dir: str | Path,
                          console: Console | None, command: str | None) -> EvaluationResult | None:
    """Under torchrun: rank r evaluates shard r of WORLD_SIZE into OUT/shard-r-of-W/state.json (resumable), rank 0
    gathers the shards' states, joins them and writes OUT/results.json as a one-process run would."""
    if not save and out is None:
        raise UserError("under torchrun an evaluation needs an output directory (--out, or save=True)")
    where = distributed.launch()
    shard_blocks(len(prep.data), prep.block, (where.rank, where.world_size))  # every rank refuses alike, no group
    where = distributed.init(prep.device)
    chosen = distributed.unanimous(lambda: str(_default_out(prep, out, runs_dir)) if where.is_main else None,
                                   "checking the output folder")
    out = Path(distributed.broadcast_object(chosen, "choosing the output folder"))
    mine = out / f"shard-{where.rank}-of-{where.world_size}"

    distributed.unanimous(lambda: check_writable(mine), "checking the shard folders")
    key = suite_key(_suite_config(prep.origin, prep.plan, prep.data), prep.attacks, len(prep.data),
                    cascade=prep.plan.cascade, batch_size=prep.plan.batch_size,
                    draws=judge_draws_for(prep.plan.policy, prep.plan.judge_draws), block=prep.block)
    distributed.same_everywhere(key, "evaluation (model, data, attacks, seed, n, block)")
    quiet = console if where.is_main else Console(stderr=True, quiet=True)
    try:
        distributed.unanimous(lambda: _locked_shard(prep, (where.rank, where.world_size), mine, quiet),
                              "evaluating the shards")
    except distributed.DistributedFailure as e:
        raise distributed.DistributedFailure(f"{e}; rerun the same command: every rank resumes its shard from "
                                             f"{out}/shard-<rank>-of-{where.world_size}/state.json") from None
    try:
        states = distributed.all_gather_object(read_json(mine / "state.json"), "gathering the shards' outcomes")
    except distributed.DistributedFailure as e:
        raise distributed.DistributedFailure(f"{e}; rerun the same command: every rank resumes its shard from "
                                             f"{out}/shard-<rank>-of-{where.world_size}/state.json") from None
    if not where.is_main:
        return None
    with _locked_output(out, RESULTS_FILE):
        result = _run(*prep.run_args(), out, console, command, block=prep.block,
                      merge_states_=[(f"rank {r}", s) for r, s in enumerate(states)])
        result.save(out)
    return result


def _locked_shard(prep: _Prepared, shard: tuple[int, int], folder: Path, console: Console | None) -> None:
    with _locked_output(folder, RESULTS_FILE):
        _run_shard(prep, shard, folder / "state.json", console)


def _run_shard(prep: _Prepared, shard: tuple[int, int], state_path: Path, console: Console | None) -> None:
    configure(prep.device)
    seed_all(prep.plan.seed)
    model = prep.model.to(prep.device).eval()
    run_suite(model, prep.attacks, prep.data, batch_size=prep.plan.batch_size, device=prep.device,
              cascade=prep.plan.cascade, uncascaded=frozenset({prep.plan.suite.paper_attack} - {None}),
              state_path=state_path, config=_suite_config(prep.origin, prep.plan, prep.data),
              console=console or Console(stderr=True), draws=judge_draws_for(prep.plan.policy, prep.plan.judge_draws),
              block=prep.block, shard=shard)


def _check_sequence_support(attacks: list[Attack], data: Split) -> None:
    """Sequence labels (N, S) need attacks that judge whole sequences (``Attack.sequences``); say which do not."""
    if not is_sequence(data.y):
        return
    refused = [a.name for a in attacks if not a.sequences]
    if refused:
        able = sorted(name for name, cls in ATTACKS.items() if cls.sequences)
        raise UserError(f"{', '.join(refused)} cannot attack a sequence model (its library assumes one class per "
                        f"image); use {', '.join(able)}")


def _data(origin: ModelOrigin, x: torch.Tensor | None, y: torch.Tensor | None, n: int | None,
          data_dir: str | None, download: bool) -> Split:
    if x is not None:
        if y is None or len(x) != len(y):
            raise UserError("give images x and labels y of the same length")
        split = Split(x.detach().cpu(), y.detach().cpu().long(), "tensors")
        return split.subset(slice(0, n)) if n is not None else split
    if origin.dataset is None:
        raise UserError("give images x and labels y (this model was not loaded by name, so its dataset is unknown)")
    test = load_split(origin.dataset, "test", data_dir, download, origin.data_params)
    if n is not None and n > len(test):
        raise UserError(f"--n {n} exceeds the {len(test)} test images of {origin.dataset}")
    return test.subset(slice(0, n))


@torch.no_grad()
def _num_classes(model: nn.Module, data: Split) -> int:
    from robust_uatt.data.datasets import to_float

    was_training = model.training
    try:
        return int(model.eval()(to_float(data.x[:1].to(next(model.parameters()).device))).shape[1])
    finally:
        model.train(was_training)


def _suite_config(origin: ModelOrigin, plan: _Plan, data: Split) -> dict[str, Any]:
    return {"model": {k: v for k, v in origin.info.items() if k != "recipe"}, "eps": plan.eps, "seed": plan.seed,
            "policy": plan.policy, "n": len(data), "dataset": origin.dataset}


def _run(model: nn.Module, data: Split, plan: _Plan, attacks: list[Attack], origin: ModelOrigin, num_classes: int,
         device: torch.device, state_dir: str | Path | None, console: Console | None,
         command: str | None, *, block: int = DEFAULT_BLOCK, merge: Sequence[str | Path] | None = None,
         merge_states_: list[tuple[str, dict[str, Any]]] | None = None) -> EvaluationResult:
    configure(device)
    seed_all(plan.seed)
    model = model.to(device).eval()
    console = console or Console(stderr=True)
    stochastic = plan.policy == "sample"
    eot = plan.eot or (8 if stochastic else 1)
    draws = judge_draws_for(plan.policy, plan.judge_draws)
    config = _suite_config(origin, plan, data)
    state_path = Path(state_dir) / "state.json" if state_dir is not None else None
    if merge is not None:
        merge_states_ = [(str(p), _shard_state(Path(p))) for p in merge]
    if merge_states_ is not None:
        assert state_path is not None
        count = len(merge_states_)
        keys = {i: suite_key(config, attacks, len(data), cascade=plan.cascade, batch_size=plan.batch_size,
                             draws=draws, block=block, shard=(i, count)) for i in range(count)}
        clean, records = merge_states(merge_states_, keys, count, attacks)
        write_state(state_path, suite_key(config, attacks, len(data), cascade=plan.cascade,
                                          batch_size=plan.batch_size, draws=draws, block=block), clean, records)
        seed_all(plan.seed)
    started = time.perf_counter()
    outcome = run_suite(model, attacks, data, batch_size=plan.batch_size, device=device, cascade=plan.cascade,
                        uncascaded=frozenset({plan.suite.paper_attack} - {None}), state_path=state_path,
                        config=config, console=console, draws=draws, block=block)
    suite_done = time.perf_counter()
    seed_all(plan.seed)  # the checks draw the same numbers whether or not the attacks were resumed
    counter = PassCounter()
    with counter.attached(model):
        checks = _checks(model, data, outcome, attacks, plan, num_classes, device, eot) if plan.checks != "none" \
            else []
    valid, reasons = gate(checks)
    result = _result(outcome, attacks, plan, origin, data, eot, valid, reasons, checks, device, command)
    result.timing = _timing(outcome.attack_seconds_here, suite_done - started, time.perf_counter() - suite_done,
                            counter)
    result.judge_draws = draws
    result.data["block"] = block  # points per evaluation block: outcomes depend on it, never on the shards
    if merge_states_ is not None:
        result.extra["shards"] = {"count": len(merge_states_), "from": [where for where, _ in merge_states_]}
    return result


def _timing(attack_seconds: float, suite_seconds: float, checks_seconds: float, checks: PassCounter) -> dict:
    """Where this process's evaluation time went: the clean pass with its set-up (attack-graph check, gradient
    probes, state writes), the attacks, and the checks with their passes. A resumed run counts only what it computed
    itself (the attack rows' seconds also hold the earlier processes' time). Model and data loading come before and
    are not included."""
    return {"suite_seconds": suite_seconds, "attack_seconds": attack_seconds,
            "clean_and_setup_seconds": max(0.0, suite_seconds - attack_seconds), "checks_seconds": checks_seconds,
            "checks_forward_passes": checks.forwards, "checks_backward_passes": checks.backwards,
            "total_seconds": suite_seconds + checks_seconds}


def _shard_state(path: Path) -> dict[str, Any]:
    state_file = path / "state.json" if path.is_dir() else path
    if not state_file.is_file():
        raise UserError(f"{path}: no shard state (state.json) to merge")
    state = read_json(state_file)
    if not isinstance(state, dict):
        raise UserError(f"{state_file}: not the state of a shard")
    return state


JUDGE_DRAWS_SAMPLE = 9  # default majority for policy "sample": odd, so a vote never ties


def judge_draws_for(policy: str, judge_draws: int | None) -> int:
    """Passes per judgement: as given, else 9 for a sampling policy and 1 for a deterministic model."""
    return judge_draws or (JUDGE_DRAWS_SAMPLE if policy == "sample" else 1)


def _checks(model: nn.Module, data: Split, outcome: SuiteOutcome, attacks: list[Attack], plan: _Plan,
            num_classes: int, device: torch.device, eot: int) -> list:
    checks = check_model(model, data, outcome.clean_correct, num_classes=num_classes, device=device, seed=plan.seed,
                         stochastic=plan.policy == "sample", attacks=attacks, eps=plan.eps, eot=eot)
    checks += check_run(outcome, [a.describe() for a in attacks])
    if plan.checks == "full":
        pgd_steps = max((a.budget.steps for a in attacks if a.white_box and a.steps_meaning == "iterations"),
                        default=20)
        checks += timed(check_budget, model, data, outcome, eps=plan.eps, steps=pgd_steps, eot=eot, device=device,
                        seed=plan.seed)
    return checks


def _result(outcome: SuiteOutcome, attacks: list[Attack], plan: _Plan, origin: ModelOrigin, data: Split, eot: int,
            valid: bool, reasons: list[str], checks: list, device: torch.device,
            command: str | None) -> EvaluationResult:
    summary = summarize(outcome, plan.suite.paper_attack)
    for row, entry in zip(summary["attacks"], plan.suite.entries):
        if entry.role:
            row["role"] = entry.role
    verdict = "UNCHECKED" if plan.checks == "none" else ("valid" if valid else "INVALID")
    bounded = all(a.bounded for a in attacks)
    broken_by = [""] * len(data)
    for a, rec in zip(attacks, outcome.records):
        for i in rec.broken:
            broken_by[i] = broken_by[i] or a.name
    first = attacks[0]
    return EvaluationResult(
        model=origin.info, suite={"name": plan.suite.name, "description": plan.suite.description},
        attack=plan.suite.name,
        threat_model={"norm": first.norm if len(attacks) == 1 else "Linf", "bounded": bounded,
                      "eps": plan.eps if bounded else None, "eps_text": plan.eps_text, "eps_units": "pixel [0,1]",
                      "steps": first.budget.steps, "steps_meaning": first.steps_meaning, "alpha": first.budget.alpha},
        policy=plan.policy, eot=eot, cascade=plan.cascade,
        autoattack_implementation=next((a.describe()["implementation"] for a in attacks if a.name == "autoattack"),
                                       None),
        **summary,
        verdict=verdict, valid=verdict == "valid", invalid_reasons=reasons, checks=as_dicts(checks),
        checks_level=plan.checks,
        data={"dataset": origin.dataset, "source": data.source, "first_n": len(data),
              "lossless_fraction": data.lossless_fraction()},
        seed=plan.seed, device=str(device), batch_size=plan.batch_size,
        command=command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
        versions=versions(),
        per_example={"clean_correct": outcome.clean_correct.int().tolist(),
                     "robust_correct": outcome.robust_correct().int().tolist(), "broken_by": broken_by},
    )


# ------------------------------------------------------------------------------------------------ curve
def security_curve(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
                   eps: Sequence[float | str], suite: str | None = None, attacks: Sequence[str] | None = None,
                   steps: int | None = None, n: int | None = None, batch_size: int = 250, policy: str = "mean",
                   eot: int | None = None, judge_draws: int | None = None, checks: str = "fast",
                   device: str | torch.device = "auto", seed: int = 0, save: bool = False,
                   out: str | Path | None = None, runs_dir: str | Path = "runs", data_dir: str | None = None,
                   download: bool = True, console: Console | None = None, command: str | None = None) -> dict[str, Any]:
    """Robust accuracy against eps (one evaluation per radius), made monotone per example: a point broken at eps'
    counts as broken at every eps >= eps'. The raw per-eps values are kept beside the curve, every accuracy with its
    95% Clopper-Pearson interval. ``policy``/``eot``/``judge_draws`` as in ``evaluate``; ``checks`` ("none", "fast",
    "full") run at every radius, named "eps <r>: <check>", and any failed gating check makes the curve INVALID
    (``valid``). ``save``/``out``: write curve.json and curve.png (default RUNS/curves/<model>/<time>); the dict's
    "path"."""
    radii = [_radius(e) for e in eps]
    _plan(radii[0] if radii else 0.0, suite=suite, attacks=attacks, steps=steps, alpha=None, eot=eot, options=None,
          source=None, policy=policy, checks=checks, cascade=True, batch_size=batch_size, seed=seed, n=n,
          judge_draws=judge_draws)
    if policy == "sample" and not hasattr(model, "policy"):
        raise UserError(f"--policy sample applies to attention models; {_origin(model).info['name']} has no policy")
    origin = _origin(model)
    if save or out is not None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = Path(out) if out is not None else Path(runs_dir) / "curves" / safe_component(origin.info["name"]) / stamp
        if (out / "curve.json").exists():
            raise UserError(f"{out}/curve.json exists; choose another --out")
        check_writable(out)
    data = _data(origin, x, y, n if n is not None else (None if x is not None else 500), data_dir, download)
    with _locked_output(out, "curve.json") if out is not None else nullcontext():  # the lock before the work
        results = {}
        for i in sorted(range(len(radii)), key=lambda i: radii[i]):
            results[i] = evaluate(model, data.x, data.y, eps=radii[i], suite=suite, attacks=attacks, steps=steps,
                                  policy=policy, eot=eot, judge_draws=judge_draws, checks=checks,
                                  batch_size=batch_size, device=device, seed=seed, console=console)
        raw = torch.tensor([results[i].per_example["robust_correct"] for i in range(len(radii))], dtype=torch.bool)
        clean = torch.tensor(results[0].per_example["clean_correct"], dtype=torch.bool)
        named = [(radii[i], results[i]) for i in sorted(results, key=lambda i: radii[i])]
        curve = {"model": {"name": origin.info["name"], "weights": origin.info.get("weights")},
                 "suite": results[0].suite_name, "n": len(data), "eps_units": "pixel [0,1]",
                 "eps_text": [str(e) for e in eps], **monotone_curve(radii, raw, clean),
                 "attack_graph": results[0].attack_graph,
                 "policy": policy, "eot": results[0].eot, "judge_draws": results[0].judge_draws, "checks_level": checks,
                 "checks": [{**c, "name": f"eps {r:.4g}: {c['name']}"} for r, res in named for c in res.checks],
                 "valid": all(res.valid for _, res in named),
                 "invalid_reasons": [f"eps {r:.4g}: {why}" for r, res in named for why in res.invalid_reasons],
                 "seed": seed,
                 "device": results[0].device, "versions": versions(),
                 "command": command if command is not None else " ".join(shlex.quote(a) for a in sys.argv)}
        if out is not None:
            from robust_uatt.viz.plots import plot_curve

            write_json(out / "curve.json", curve)
            plot_curve(curve, out / "curve.png",
                       plot_text(f"{curve['model']['name']}: {curve['suite']}, first {len(data)} test images"))
            curve["path"] = str(out / "curve.json")
    return curve


@contextmanager
def _locked_output(out: Path, final: str) -> Iterator[None]:
    """Create ``out`` and hold its RunLock for the block (one writer per directory, as for train): refuse when
    ``final`` exists there (checked again under the lock), remove a killed writer's temporary files, and leave no
    directory behind when the block fails before writing anything."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with RunLock(out):
            if (out / final).exists():
                raise UserError(f"{out}/{final} exists; choose another --out")
            remove_stale_temps(out)  # we hold the lock, so none of them is live
            yield
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


# ------------------------------------------------------------------------------------------------ training
def train(name: str | None = None, preset: str | None = None, out: str | Path | None = None, *,
          resume: str | Path | None = None, seed: int | None = None, device: str = "auto",
          data_dir: str | None = None,
          download: bool = True, runs_dir: str | Path = "runs", deterministic: bool | None = None,
          console: Console | None = None, sync_bn: bool = False, extend: str | Path | None = None,
          **overrides: Any) -> Path:
    """Train a zoo model (``name``, optionally a ``preset`` such as "smoke" or "cpu") into ``out`` (default
    RUNS/<name>/<time>), or continue the interrupted run ``resume``; returns the run directory.

    ``extend``: a finished run that early stopping ended, continued into ``out`` under a larger patience (from
    ``preset`` or ``patience=``; nothing else may change, see ``robust_uatt.training.extend``): the epochs it
    already trained are not trained again, and the result is the run the larger patience gives from scratch.

    ``overrides``: recipe values by key, e.g. ``epochs=3`` or ``lr=0.01`` ([train]), ``width=0.5`` ([model]);
    adversarial training: ``adv="fgsm-rs" | "pgd" | "trades"`` and ``adv_eps="8/255"``, ``adv_alpha``,
    ``adv_steps``, ``adv_beta``, ``adv_guard_drop`` ... (the keys of the recipe's [adv] table, ``AdvConfig``).

    ``seed`` defaults to 0; ``resume`` continues the run with its own recipe, seed and directory, so ``preset``,
    ``out``, ``seed`` or overrides beside it are refused rather than silently ignored.

    Under torchrun (WORLD_SIZE > 1) every rank calls this with the same arguments: DDP with the recipe's batch as
    the global batch (split evenly across ranks), rank 0 writing the run; ``sync_bn`` converts BatchNorm to
    SyncBatchNorm (CUDA). A run resumes with the world size it started with."""
    pin_code_version()  # results stamp the commit this process started from
    where = distributed.launch()
    device_ = distributed.device_for(resolve_device(device), where)
    if extend is not None:
        return _extend(Path(extend), name, preset, out, seed=seed, resume=resume, device=device_, data_dir=data_dir,
                       download=download, runs_dir=runs_dir, console=console, where=where, sync_bn=sync_bn,
                       overrides=overrides)
    if resume:
        given = [f"--{k}" for k, v in {"preset": preset, "out": out, "seed": seed, **overrides}.items()
                 if v is not None] + (["--sync-bn"] if sync_bn else [])
        if given:
            raise UserError(f"--resume continues a run with its own recipe, seed and directory; {', '.join(given)} "
                            f"cannot change them (start a new run to train differently)")
        if where.distributed:
            distributed.init(device_)
            found = distributed.unanimous(lambda: _resumable_launch(Path(resume), name, data_dir, where)
                                          if where.is_main else None, "reading the run to resume")
            run_dir_text, recipe_dict, seed, data_dir, sync_bn = distributed.broadcast_object(
                found, "sharing the run to resume")
            from robust_uatt.models.zoo import Recipe

            run_dir, recipe = Path(run_dir_text), Recipe.from_dict(recipe_dict, where="rank 0")
        else:
            run_dir, recipe, seed, data_dir = _resumable(Path(resume), name, data_dir)
            _check_launch(run_dir, where)
    else:
        seed = 0 if seed is None else seed
        if not name:
            raise UserError("name a zoo model to train (see `robust-uatt zoo`), or --resume RUN_DIR")
        recipe = load_recipe(name, preset)
        _override(recipe, overrides)
        if where.distributed:  # the same on every rank: refused before any process group exists
            batch = recipe.train["batch_size"]
            if batch % where.world_size:
                raise UserError(f"the global batch {batch} does not split evenly across {where.world_size} ranks: "
                                f"use a world size that divides it (or a recipe or preset whose "
                                f"batch_size is a multiple of {where.world_size})")
            if sync_bn and device_.type != "cuda":
                raise UserError("--sync-bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); on the CPU each "
                                "rank normalises over its own share of the batch")

        def claim() -> str:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            run_dir = Path(out) if out else Path(runs_dir) / safe_component(recipe.name) / stamp
            if run_dir.is_dir():
                RunLock(run_dir).check_free()
            if (run_dir / CHECKPOINT).exists() or (run_dir / WEIGHTS).exists():
                raise UserError(f"{run_dir} already holds a run: use --resume {run_dir}, or another --out")
            check_writable(run_dir)
            return str(run_dir)

        if where.distributed:  # rank 0 names and checks the run directory (others may not see its disk)
            distributed.init(device_)
            chosen = distributed.unanimous(lambda: claim() if where.is_main else None, "checking the run directory")
            run_dir = Path(distributed.broadcast_object(chosen, "sharing the run directory"))
            distributed.same_everywhere({"recipe": recipe.to_dict(), "seed": seed, "sync_bn": sync_bn},
                                        "training configuration (recipe, preset, seed, overrides)")
        else:
            run_dir = Path(claim())
    try:
        train_recipe(recipe, run_dir, seed=seed, device=device_, data_dir=data_dir, resume=bool(resume),
                     download=download, console=console or Console(stderr=True), deterministic=deterministic,
                     sync_bn=sync_bn)
    except OSError as e:
        from robust_uatt.utils.errors import environment_error

        message = environment_error(e)
        if message is None:
            raise
        if (run_dir / CHECKPOINT).is_file():
            message += f"; the last checkpoint is intact: robust-uatt train --resume {shlex.quote(str(run_dir))}"
        raise UserError(message) from e
    return run_dir


def _extend(src: Path, name: str | None, preset: str | None, out: str | Path | None, *, seed: int | None,
            resume: Any, device: torch.device, data_dir: str | None, download: bool, runs_dir: str | Path,
            console: Console | None, where: distributed.Launch, sync_bn: bool, overrides: dict[str, Any]) -> Path:
    """``train(extend=...)``: copy the finished run ``src`` into a new run directory under the new patience, then
    resume it there (one process; the source run is never modified)."""
    import copy

    from robust_uatt.training.extend import prepare_extension, read_source

    if resume or seed is not None or sync_bn or where.distributed:
        given = [w for w, on in (("--resume", resume), ("--seed", seed is not None), ("--sync-bn", sync_bn),
                                 ("torchrun", where.distributed)) if on]
        raise UserError(f"--extend continues a finished run with its own seed, in one process; {', '.join(given)} "
                        f"cannot go with it")
    source = read_source(src)
    old = source.recipe
    if name and name != old.name:
        raise UserError(f"{src} is a run of {old.name}, not {name}")
    recipe = load_recipe(old.name, preset) if preset else copy.deepcopy(old)
    _override(recipe, overrides)
    if not preset:
        recipe.preset = _preset_of(recipe, old.preset)
    run_dir = Path(out) if out else Path(runs_dir) / safe_component(old.name) / (
        f"{src.name}-patience{recipe.train['patience']}")
    check_writable(run_dir)
    prepare_extension(source, run_dir, recipe)
    (console or Console(stderr=True)).print(
        f"extending {src} (patience {old.train['patience']}) into {run_dir} with patience "
        f"{recipe.train['patience']}", markup=False, highlight=False, soft_wrap=True)
    saved_dir = source.config.get("data_dir")
    return train(resume=run_dir, device=str(device), data_dir=data_dir or (saved_dir if isinstance(saved_dir, str)
                                                                           else None),
                 download=download, runs_dir=runs_dir, console=console)


def _preset_of(recipe: Any, fallback: str | None) -> str | None:
    """The zoo preset (None: the recipe itself) whose recipe ``recipe`` now is, so that an extension by overrides
    (e.g. a capped-epochs preset extended with ``epochs=100``) carries the name of what it became; ``fallback``
    when none matches or the recipe is not in the zoo."""
    def content(r: Any) -> dict[str, Any]:
        return {k: v for k, v in r.to_dict().items() if k != "preset"}

    try:
        for candidate in [None, *load_recipe(recipe.name).presets]:
            if content(load_recipe(recipe.name, candidate)) == content(recipe):
                return candidate
    except UserError:
        pass
    return fallback


def _check_launch(run_dir: Path, where: distributed.Launch) -> dict[str, Any]:
    """A run resumes with the world size it started with (its data order and batches depend on it)."""
    config = read_json(run_dir / CONFIG)
    launch = config.get("distributed") if isinstance(config, dict) else None
    launch = launch if isinstance(launch, dict) else {}
    started = launch.get("world_size", 1)
    if started != where.world_size:
        how = "one process (no torchrun)" if started == 1 else f"torchrun with {started} processes in all"
        raise UserError(f"{run_dir} was trained with world size {started}; resume it the same way: {how} "
                        f"(this launch has {where.world_size})")
    return launch


def _resumable_launch(run_dir: Path, name: str | None, data_dir: str | None,
                      where: distributed.Launch) -> tuple[str, dict[str, Any], int, str | None, bool]:
    run_dir, recipe, seed, data_dir = _resumable(run_dir, name, data_dir)
    launch = _check_launch(run_dir, where)
    return str(run_dir), recipe.to_dict(), seed, data_dir, bool(launch.get("sync_batchnorm", False))


def _override(recipe: Any, overrides: dict[str, Any]) -> None:
    adv = {("kind" if k == "adv" else k[4:]): v for k, v in overrides.items()
           if (k == "adv" or k.startswith("adv_")) and v is not None}
    if adv:
        if "kind" not in adv and not recipe.adv:
            raise UserError(f"--{'-'.join(['adv', *sorted(adv)[0].split('_')])} needs --adv KIND (fgsm-rs, pgd or "
                            f"trades), or a recipe with an [adv] table")
        from robust_uatt.training.config import adv_table

        recipe.adv = adv_table({**recipe.adv, **adv}, "command line")
    for key, value in overrides.items():
        if value is None or key == "adv" or key.startswith("adv_"):
            continue
        table = next((t for t in (recipe.train, recipe.data, recipe.model) if key in t), None)
        if table is None:
            raise unknown_name("recipe key", key, [*recipe.train, *recipe.data, *recipe.model])
        if key == "epochs" and (not isinstance(value, int) or value <= 0):
            raise UserError(f"--epochs must be a positive integer, got {value}")
        table[key] = value
    from robust_uatt.models.zoo import check_train_table

    recipe.train = check_train_table(recipe.train, "overrides")


def _resumable(run_dir: Path, name: str | None, data_dir: str | None) -> tuple[Path, Any, int, str | None]:
    from robust_uatt.models.zoo import Recipe

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    RunLock(run_dir).check_free()  # "in use by process N" beats any other complaint about a live run
    if not (run_dir / CHECKPOINT).is_file():
        raise UserError(f"{run_dir}: nothing to resume (no {CHECKPOINT})")
    if (run_dir / WEIGHTS).is_file():
        raise UserError(f"{run_dir}: this run has already finished")
    config = read_json(run_dir / CONFIG)
    if not (isinstance(config, dict) and isinstance(config.get("recipe"), dict)
            and isinstance(config.get("seed"), int) and not isinstance(config.get("seed"), bool)
            and 0 <= config["seed"] < 2**32):
        raise UserError(f"{run_dir / CONFIG}: not a robust-uatt run configuration (needs 'recipe' and a 'seed' in "
                        f"0..2^32-1)")
    recipe = Recipe.from_dict(config["recipe"], where=str(run_dir / CONFIG))
    if name and name != recipe.name:
        raise UserError(f"{run_dir} is a run of {recipe.name}, not {name}")
    saved_dir = config.get("data_dir")
    return run_dir, recipe, config["seed"], data_dir or (saved_dir if isinstance(saved_dir, str) else None)


# ------------------------------------------------------------------------------------------------ comparison
def compare(results: Sequence[str | Path | EvaluationResult], leaderboard: str | Path | None = None, *,
            top: int = 10, runs_dir: str | Path = "runs") -> Report:
    """Our results beside RobustBench leaderboard rows of the same threat model (dataset, norm, eps).

    ``results``: EvaluationResult objects, results.json files, folders holding them, or zoo names (all their attack
    results under RUNS/attacks/<name>/). ``leaderboard``: RobustBench model_info/ or CSV files (default
    $ROBUST_UATT_DATA/robustbench)."""
    if top < 0:
        raise UserError(f"--top must be 0 or more, got {top}")
    source = Path(leaderboard) if leaderboard else default_leaderboard()
    rows = read_leaderboard(source)
    ours = [parse_result(r, f"<{r.name}>") for r in results if isinstance(r, EvaluationResult)]
    specs = [str(r) for r in results if not isinstance(r, EvaluationResult)]
    ours += load_results(specs, runs_dir) if specs else []
    return compare_results(ours, rows, top=top, source=str(source))


def seeds(results: Sequence[str | Path | EvaluationResult], *, runs_dir: str | Path = "runs") -> list[SeedGroup]:
    """Mean and spread over training seeds, one group per (model, preset, suite, eps).

    ``results``: EvaluationResult objects, results.json files, folders holding them (or runs holding them), or zoo
    names (their attack results under RUNS/attacks/<name>/). A group may not repeat a training seed or mix test
    points (UserError)."""
    from robust_uatt.benchmark.compare import _results_files

    loaded: list[EvaluationResult] = []
    seen: set[Path] = set()
    for item in results:
        if isinstance(item, EvaluationResult):
            loaded.append(item)
            continue
        for path in _results_files(str(item), runs_dir):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                loaded.append(EvaluationResult.load(path))
    if not loaded:
        raise UserError("no results to aggregate")
    for r in loaded:
        if any(p.startswith("results.json has no") for p in r.problems):
            raise UserError(f"{r.path}: not a complete results.json ({'; '.join(r.problems[:2])})")
    return group_by_seed(loaded)


def paper_table(table: int, *, runs_dir: str | Path = "runs", preset: str | None = None,
                records: str | Path | None = None) -> dict[str, Any]:
    """Paper Table ``table`` (1, 2 or 3) beside the finished runs of its recipes under ``runs_dir`` (or, with
    ``records``, the committed run records such as docs/results/tables/runs): per row the paper's error, ours as
    mean ± std over training seeds, each seed with n, interval and budget (JSON-ready)."""
    from robust_uatt.benchmark.paper_tables import paper_rows, table_markdown

    rows = paper_rows(table, runs_dir, preset, records)
    return {"table": table, "preset": preset, "rows": [r.to_json() for r in rows],
            "markdown": table_markdown(table, rows),
            "error": "1 - test accuracy (whole sequences for Table 3); std: sample standard deviation over seeds"}


def write_json_file(path: str | Path, obj: Any) -> Path:
    """Write a JSON report atomically (the CLI's --out of curve and compare)."""
    check_writable(Path(path).parent)
    write_json(path, obj)
    return Path(path)


__all__ = ["list_models", "list_attacks", "list_suites", "zoo", "load_model", "make_attack", "evaluate",
           "evaluate_shard", "parse_shard", "security_curve", "train", "compare", "seeds", "paper_table",
           "EvaluationResult", "write_json_file"]


# ------------------------------------------------------------------------------------------------ the rest
def draw_glimpses(model: nn.Module, out: str | Path, *, n: int = 8, policy: str = "mean", seed: int = 0,
                  device: str = "auto", data_dir: str | None = None, download: bool = True) -> Path:
    """Where an attention model looks on its first ``n`` test images (top-down region, numbered glimpses) -> PNG."""
    from robust_uatt.data.datasets import to_float
    from robust_uatt.viz.glimpses import plot_glimpses

    if n <= 0:
        raise UserError(f"--n must be a positive integer, got {n}")
    if not str(out).lower().endswith(".png"):
        raise UserError(f"--out must name a .png file, got {out}")
    origin = _origin(model)
    if not hasattr(model, "trace"):
        arch = (origin.info.get("recipe") or {}).get("model", {}).get("arch", type(model).__name__)
        raise UserError(f"{origin.info['name']} is not an attention model (arch {arch}): nothing to draw")
    device_ = resolve_device(device)
    model.policy = policy
    test = _data(origin, None, None, None, data_dir, download)
    data = test.subset(slice(0, min(n, len(test))))
    check_writable(Path(out).parent)
    seed_all(seed)
    model = model.to(device_)
    x = to_float(data.x.to(device_))
    with torch.inference_mode():
        trace = model.trace(x)
        preds = decide(model(x)).cpu()
    trace = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in trace.items()}
    plot_glimpses(x.cpu(), trace, out, labels=data.y, preds=preds,
                  title=plot_text(f"{origin.info['name']} ({policy} policy), first {len(data)} test images"))
    return Path(out)


def selftest(seed: int = 0, *, data_dir: str | None = None, n: int = 200) -> dict[str, dict[str, Any]]:
    """Plant eight gradient-masking tricks on a small CNN trained in seconds on real CIFAR-10 and attack each at
    8/255 on the first ``n`` test images: {model: {clean, naive, worst_case, verdict, failed, expected, caught}}.
    A plant is caught when it ends INVALID naming its symptom (or near the undefended number); the undefended model
    is "caught" when it is INVALID (it must not be)."""
    from robust_uatt.evaluation import selftest as planted

    return planted.run_selftest(seed, data_dir, n)


__all__ += ["draw_glimpses", "selftest"]


def benchmark(models: Sequence[str] | None = None, eps: Sequence[str] = ("8/255", "1/255"), *, n: int = 200,
              suite: str = "zoo", out: str | Path | None = None, device: str = "auto", runs_dir: str | Path = "runs",
              data_dir: str | None = None, download: bool = True, leaderboard: str | Path | None = None,
              console: Console | None = None) -> ZooBenchmark:
    """Benchmark the zoo (README command (1)): every CIFAR-10 zoo model with weights (local run, else shipped), at
    each radius, clean + the paper's protocol + a quick worst case, beside RobustBench. Evaluations are written
    under ``out/<model>/eps-<eps>/`` when ``out`` is given; a rerun reuses the finished ones."""
    if n <= 0:
        raise UserError(f"--n must be a positive integer, got {n}")
    names = list(models) if models else zoo_models("cifar10", runs_dir)
    if not names:
        raise UserError(f"no CIFAR-10 zoo model has weights: none under {runs_dir}/ and none shipped in "
                        f"{shipped_dir()}; train one with `robust-uatt train`")
    bench = ZooBenchmark(out=Path(out) if out is not None else None)
    for name in names:
        model = load_model(name, runs_dir=runs_dir)
        for radius in eps:
            target = None if bench.out is None else result_dir(bench.out, name, radius)
            if target is not None and (target / RESULTS_FILE).exists():
                result = EvaluationResult.load(target / RESULTS_FILE)  # finished in an earlier, interrupted run
            else:
                result = evaluate(model, eps=radius, suite=suite, n=n, device=device, out=target, runs_dir=runs_dir,
                                  data_dir=data_dir, download=download, console=console)
            bench.origins[result.name] = _origin(model).info.get("origin", "?")
            bench.results.append(result)
    bench.comparison = compare(bench.results, leaderboard, top=5, runs_dir=runs_dir)
    return bench
