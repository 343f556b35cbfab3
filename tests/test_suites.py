from __future__ import annotations

from pathlib import Path

import pytest

from robust_uatt.evaluation.suites import load_suite, suite_names
from robust_uatt.utils.errors import UserError


def test_shipped_suites_load_and_the_adaptive_one_contains_the_paper_protocol() -> None:
    assert {"paper", "quick", "standard", "adaptive"} <= set(suite_names())
    adaptive = load_suite("adaptive")
    assert adaptive.paper_attack == "pgd-eq14"
    assert {"pgd-bpda", "region-enum", "apgd-dlr", "square", "noise"} <= {e.name for e in adaptive.entries}
    assert load_suite("paper").entries[0].options == {"grad_path": "vgg"}


@pytest.mark.parametrize("body, match", [
    ('[[attacks]]\nname = "pgd-ce"\nstep = 3\n', r"step.*did you mean steps"),
    ('[[attacks]]\nname = "pgd-cee"\n', r"pgd-cee.*did you mean pgd-ce"),
    ('[[attacks]]\nname = "pgd-ce"\nsteps = "3"\n', r"steps must be int"),
    ('[[attacks]]\nname = "pgd-ce"\noptions = { restart = 2 }\n', r"restart.*did you mean restarts"),
    ('[[attacks]]\nname = "pgd-eq14"\nrole = "paper"\n[[attacks]]\nname = "pgd-eq14"\nrole = "paper"\n', "at most one"),
    ('description = "no attacks"\n', "at least one"),
    ('[[attacks]]\nname = "pgd-ce"\nrole = "papper"\n', r"papper.*did you mean paper"),
    ('[attacks\n', "invalid TOML"),
])
def test_suite_typos_are_reported_with_file_and_key(tmp_path: Path, body: str, match: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(UserError, match=match) as e:
        load_suite(str(path))
    assert "mine.toml" in str(e.value)


def test_unknown_suite_suggests() -> None:
    with pytest.raises(UserError, match="did you mean adaptive"):
        load_suite("adaptiv")
