from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robust_uatt.models.vgg import VGG16
from robust_uatt.models.zoo import MODELS, create_model, load_recipe, recipe_names
from robust_uatt.utils.errors import UserError


def test_registry_lists_the_vgg_recipe_and_presets() -> None:
    assert "cifar10-vgg" in recipe_names()
    assert "vgg16" in MODELS
    recipe = load_recipe("cifar10-vgg")
    assert {"smoke", "cpu"} <= set(recipe.presets)
    smoke = load_recipe("cifar10-vgg", "smoke")
    assert smoke.model["width"] < recipe.model["width"] and smoke.train["epochs"] < recipe.train["epochs"]
    assert smoke.train["lr"] == recipe.train["lr"]  # untouched keys survive the merge


def test_vgg_shapes_feature_stack_and_normalization_inside() -> None:
    model = create_model(load_recipe("cifar10-vgg", "smoke")).eval()
    assert isinstance(model, VGG16)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13  # configuration D: 13 conv layers (+3 FC in the paper's head, 1 here)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.features) == 13
    x = torch.rand(4, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (4, 10)
    mean, std = model.normalize.mean, model.normalize.std
    manual = model.classifier(torch.flatten(model.features((x - mean) / std), 1))
    assert torch.allclose(logits, manual, atol=1e-5)
    assert torch.allclose(mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))


def test_full_width_vgg16_has_the_published_feature_parameter_count() -> None:
    model = VGG16(width=1.0)
    feature_params = sum(p.numel() for p in model.features.parameters())
    # torchvision's vgg16_bn feature stack: 14,723,136 parameters (13 convs + 13 batch norms)
    assert feature_params == 14_723_136


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return str(path)


BASE = 'description = "t"\ndataset = "cifar10"\n[model]\narch = "vgg16"\nwidth = 0.125\n'


@pytest.mark.parametrize("body, match", [
    (BASE + "[train]\nepocs = 3\n", r"epocs.*did you mean epochs"),
    (BASE + "[train]\nepochs = \"3\"\n", r"epochs must be int"),
    (BASE + "[train]\noptimizer = \"adamw\"\n", r"adamw.*did you mean adam"),
    (BASE.replace("width", "widht"), r"widht.*did you mean width"),
    (BASE.replace("vgg16", "vgg19"), r"vgg19.*did you mean vgg16"),
    (BASE.replace("cifar10", "cifar100"), r"cifar100.*did you mean cifar10"),
    (BASE + "[presets.smoke]\ntrain = { epochz = 1 }\n", r"presets.smoke.*epochz"),
    (BASE + "[train\n", r"invalid TOML"),
])
def test_recipe_typos_are_reported_with_file_and_key(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(UserError, match=match) as e:
        load_recipe(_write(tmp_path, body))
    assert "r.toml" in str(e.value)


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(UserError, match="did you mean cifar10-vgg"):
        load_recipe("cifar10-vg")
    with pytest.raises(UserError, match="did you mean smoke"):
        load_recipe("cifar10-vgg", "smok")


def test_every_recipe_and_preset_loads_and_builds() -> None:
    """Each zoo/<name>.toml (and each of its presets) validates and builds its model (on the meta device: no memory)."""
    for name in recipe_names():
        for preset in [None, *load_recipe(name).presets]:
            recipe = load_recipe(name, preset)
            with torch.device("meta"):
                create_model(recipe)
            if recipe.dataset in ("mnist", "cluttered-mnist"):  # Tables 1-2: selected on validation, never test
                assert recipe.train["select"] == "best-val" and recipe.data["holdout"] > 0


def test_tables_1_and_2_have_a_recipe_for_every_paper_row() -> None:
    papers = {load_recipe(name).paper for name in recipe_names()}
    assert sum(p.startswith("Table 1:") for p in papers) == 6
    assert sum(p.startswith("Table 2:") for p in papers) == 12
