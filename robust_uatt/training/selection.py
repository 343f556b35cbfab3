"""Model selection on the validation split: keep the best epoch, stop when it stops improving (``[train] select``).

``select = "best-val"``: after every epoch, the weights of the epoch with the best validation accuracy so far (the
hold-out split of the training set; the test split is never looked at) are kept in ``best_val.safetensors``, and the
finished run's model is that epoch's, not the last one's. ``patience = P > 0`` also stops the run after P epochs
without a new best (early stopping). Ties go to the earlier epoch. Like the adversarial guard, the best so far is
read back from metrics.jsonl on resume, so the run holds no selection state beyond that file and the weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from robust_uatt.utils.files import load_state_into, load_tensors, save_tensors

BEST_VAL = "best_val.safetensors"


class BestValidation:
    """The best validation epoch so far, its weights on disk, and the early-stopping decision."""

    def __init__(self, run_dir: Path, patience: int, records: list[dict[str, Any]]) -> None:
        self.path, self.patience = run_dir / BEST_VAL, patience
        scored = [(r["val_acc"], -r["epoch"]) for r in records if "val_acc" in r]
        best = max(scored) if scored else None
        self.best_acc, self.best_epoch = (best[0], -best[1]) if best else (float("-inf"), 0)
        self.last_epoch = max((r["epoch"] for r in records), default=0)
        self.stopped_at: int | None = None

    def out_of_patience(self) -> bool:
        """Early stopping already decided (a run resumed after its last epoch was checkpointed)."""
        return bool(self.patience) and self.best_epoch > 0 and self.last_epoch - self.best_epoch >= self.patience

    def update(self, record: dict[str, Any], model: nn.Module) -> bool:
        """Keep the weights when ``record`` is a new best; annotate it; True when patience ran out (stop)."""
        epoch, acc = record["epoch"], record["val_acc"]
        self.last_epoch = epoch
        if acc > self.best_acc:
            self.best_acc, self.best_epoch = acc, epoch
            save_tensors(self.path, dict(model.state_dict()), {"epoch": epoch, "val_acc": acc})
        record.update(val_best=self.best_acc, val_best_epoch=self.best_epoch)
        if self.out_of_patience():
            self.stopped_at = epoch
            record["early_stop"] = True
            return True
        return False

    def restore(self, model: nn.Module) -> str | None:
        """Load the best epoch's weights when it is not the last; returns what happened, or None."""
        if self.best_epoch in (0, self.last_epoch):
            return None
        tensors, meta = load_tensors(self.path)
        if meta.get("epoch") != self.best_epoch:
            from robust_uatt.utils.errors import UserError

            raise UserError(f"{self.path}: holds epoch {meta.get('epoch')}, metrics.jsonl says the best validation "
                            f"epoch is {self.best_epoch}; the run directory is damaged")
        load_state_into(model, tensors, str(self.path))
        return (f"model selection: epoch {self.best_epoch} had the best validation accuracy "
                f"({self.best_acc:.4f}); its weights are the run's model")

    def card(self) -> dict[str, Any]:
        return {"select": "best-val", "split": "validation (hold-out of the training set)", "patience": self.patience,
                "best_epoch": self.best_epoch, "best_val_acc": self.best_acc, "epochs_run": self.last_epoch,
                "stopped_early_at": self.stopped_at}


__all__ = ["BestValidation", "BEST_VAL"]
