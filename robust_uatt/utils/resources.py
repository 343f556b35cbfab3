"""Where the TOML files shipped with the package live: zoo/ (recipes) and attacks/ (suites).

Installed, they are the packages ``robust_uatt.recipes`` and ``robust_uatt.suites`` (pyproject maps the top-level
folders onto them); in a source checkout without install, the folders next to the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from robust_uatt.utils.errors import UserError, unknown_name


def toml_dirs(package: str, folder: str) -> list[Path]:
    dirs = []
    try:
        dirs.append(Path(str(resources.files(package))))
    except (ModuleNotFoundError, TypeError):
        pass
    dirs.append(Path(__file__).resolve().parents[2] / folder)
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def toml_names(package: str, folder: str) -> list[str]:
    return sorted({p.stem for d in toml_dirs(package, folder) for p in d.glob("*.toml")})


def find_toml(name: str, package: str, folder: str, kind: str) -> Path:
    """A shipped file by name, or any path ending in .toml (a user's own recipe or suite)."""
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{name}: {kind} file not found")
        return path
    for d in toml_dirs(package, folder):
        if (d / f"{name}.toml").is_file():
            return d / f"{name}.toml"
    raise unknown_name(kind, name, toml_names(package, folder))
