"""Transfer: adversarial examples made with our PGD-CE on a *source* model (e.g. plain VGG16), evaluated on the
target. The source comes from ``options["source_model"]`` (an nn.Module the CLI loads from ``--source``)."""

from __future__ import annotations

from torch import Tensor, nn

from robust_uatt.attacks.base import Attack, per_example_uniform, register_attack
from robust_uatt.attacks.pgd import pgd
from robust_uatt.utils.errors import UserError


@register_attack
class Transfer(Attack):
    name = "transfer"
    white_box = False
    sequences = True
    description = ("PGD-CE on a source model, evaluated on the target (black-box transfer); of the source's iterates, "
                   "the one that does best on the target is kept (one target query per step)")
    default_steps = 30
    uses_alpha = True
    options = {"source_model": None, "source": ""}  # source: zoo name, run directory or file (--source)
    internal_options = frozenset({"source_model"})  # the loaded source model, set by the harness

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        source = self.opts["source_model"]
        if source is None:
            raise UserError("the transfer attack needs a source model: --source MODEL")
        b = self.budget
        init = per_example_uniform(x, index, b.eps, b.seed, salt=77)
        # the gradient comes from the source; of its iterates, the one that does best on the target is kept
        return pgd(source, x, y, eps=b.eps, alpha=b.alpha, steps=b.steps, init=init, early_stop=False, judge=model)

    def describe(self) -> dict:
        d = super().describe()
        d["options"] = {"source": self.opts.get("source")}
        return d
