"""Property-based fuzzing: no command line, eps text, recipe, checkpoint or data file produces a traceback.

Every input either works or is a UserError (exit code 2 at the CLI); argparse may exit with 0 (--help) or 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from robust_uatt import cli
from robust_uatt.data.datasets import DATASETS, _read_idx, load_split
from robust_uatt.models.zoo import DATA_SCHEMA, TRAIN_SCHEMA, Recipe, load_recipe
from robust_uatt.utils.errors import UserError
from robust_uatt.utils.files import load_tensors, save_tensors

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)

# ---- the command line -----------------------------------------------------------------------------------------

TOKENS = ["train", "attack", "glimpses", "zoo", "--model", "--attack", "--eps", "--steps", "--alpha", "--n",
          "--batch-size", "--out", "--preset", "--epochs", "--resume", "--seed", "--device", "--data-dir",
          "--no-download", "--runs-dir", "--policy", "--deterministic", "-h", "--help", "cifar10-vgg", "mnist-uatt",
          "smoke", "pgd", "fgsm", "square", "8/255", "0.3", "-1", "0", "1e9", "nan", "inf", "1/0", "cpu", "cuda",
          "cuda:7", "x.png", "nowhere/run", ".", "=", "--eps=8/255", "--n=-3"]
ARGV = st.lists(st.one_of(st.sampled_from(TOKENS), TEXT), max_size=8)


@FUZZ
@given(argv=ARGV)
def test_the_parser_never_raises_anything_but_exit_0_or_2(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            cli.build_parser().parse_args(argv)
        except SystemExit as e:
            assert e.code in (0, 2), (argv, e.code)
    assert "Traceback" not in err.getvalue()


def _run_main(argv: list[str]) -> tuple[int, str]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


COMMAND = st.sampled_from(["train", "attack", "glimpses"])
OPTION = st.sampled_from(["--model", "--attack", "--eps", "--steps", "--alpha", "--n", "--batch-size", "--preset",
                          "--epochs", "--seed", "--device", "--policy", "--resume", "--out"])
VALUE = st.one_of(st.sampled_from(TOKENS[24:]), TEXT, st.integers(-10**20, 10**20).map(str),
                  st.floats(allow_nan=True).map(repr))


@FUZZ
@given(command=COMMAND, positional=st.one_of(st.none(), st.sampled_from(["cifar10-vgg", "nope"]), TEXT),
       options=st.lists(st.tuples(OPTION, VALUE), max_size=5))
@example(command="attack", positional=None, options=[("--preset", "\n")])  # found once in CI: a two-line message
@example(command="train", positional="\x1b[31m\u2028", options=[("--policy", "a\x85b")])
def test_main_answers_every_command_line_with_a_result_or_one_line(command: str, positional: str | None,
                                                                   options: list[tuple[str, str]]) -> None:
    # Safe by construction: an empty data directory, no download, a scratch working directory (relative paths),
    # and attack/glimpses always name a model file that does not exist, so nothing trains or writes.
    argv = [command] + ([positional] if positional and command == "train" else [])
    for flag, value in options:
        if flag == "--model":
            continue
        argv += [flag, value] if not flag == "--out" else [flag, "out/" + value.replace("/", "_").lstrip(".")]
    if command != "train":
        argv += ["--model", "missing/model.safetensors"]
    argv += ["--no-download", "--data-dir", EMPTY_DATA]
    with tempfile.TemporaryDirectory() as scratch, _chdir(scratch):
        code, err = _run_main(argv)
        assert not os.listdir(scratch), (argv, os.listdir(scratch))
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith(("robust-uatt: error:", "usage:")), (argv, err)


EMPTY_DATA = tempfile.mkdtemp(prefix="robust-uatt-no-data-")


@contextlib.contextmanager
def _chdir(folder: str):
    old = os.getcwd()
    os.chdir(folder)
    try:
        with mock.patch.dict(os.environ, {"ROBUST_UATT_DATA": EMPTY_DATA, "ROBUST_UATT_RUNS": "runs"}):
            yield
    finally:
        os.chdir(old)


# ---- eps -----------------------------------------------------------------------------------------------------

def _parse_eps():
    from robust_uatt.utils.eps import parse_eps

    return parse_eps


@FUZZ
@given(text=st.one_of(TEXT, st.from_regex(r"\s*[0-9.eE+-]{0,6}\s*(/\s*[0-9.eE+-]{0,6})?\s*", fullmatch=True)))
def test_eps_text_is_a_number_in_0_1_or_a_user_error(text: str) -> None:
    try:
        value = _parse_eps()(text)
    except UserError:  # (the CLI prints it on one line: test_main_answers_every_command_line...)
        return
    assert isinstance(value, float) and 0.0 <= value <= 1.0 and math.isfinite(value)


@pytest.mark.parametrize("text", ["1E400", "1e400/1e400"])
def test_eps_with_a_huge_exponent_is_a_user_error(text: str) -> None:
    with pytest.raises(UserError):
        _parse_eps()(text)


@FUZZ
@given(num=st.integers(0, 10**6), den=st.integers(1, 10**6))
def test_eps_fractions_mean_what_they_say(num: int, den: int) -> None:
    if num <= den:
        assert _parse_eps()(f"{num}/{den}") == pytest.approx(num / den)
    else:
        with pytest.raises(UserError):
            _parse_eps()(f"{num}/{den}")


# ---- recipes -------------------------------------------------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


SCALAR = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), TEXT)
VALUE_T = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(["a", "epochs", "x"]), inner,
                                                                       max_size=2)), max_leaves=6)
KEYS = {"train": list(TRAIN_SCHEMA) + ["epoch", "zzz"], "data": list(DATA_SCHEMA) + ["augmnt"],
        "model": ["arch", "width", "dropout", "hidden", "layers", "channels", "conv_layers", "widht"]}
TABLE_VALUE = st.one_of(SCALAR, st.sampled_from(["vgg16", "mlp", "cnn", "uatt", "sgd", "adam", "cosine",
                                                 "crop-flip", "none", 0, 1, 0.5, 64]))


@st.composite
def recipes(draw) -> dict:
    """Mostly near-valid recipes (so validation is exercised past its first check), sometimes junk anywhere."""
    rare = lambda: draw(st.integers(0, 9)) == 0  # noqa: E731
    doc: dict = {"dataset": draw(VALUE_T) if rare() else draw(st.sampled_from(["cifar10", "mnist"]))}
    for key in draw(st.lists(st.sampled_from(["description", "paper"] + ["bogus"] * rare()), max_size=2)):
        doc[key] = draw(TEXT) if not rare() else draw(VALUE_T)
    doc["model"] = {"arch": draw(st.sampled_from(["vgg16", "mlp", "cnn"])) if not rare() else draw(VALUE_T)}
    for section, keys in KEYS.items():
        table = draw(st.dictionaries(st.sampled_from(keys if rare() else keys[:-1]),
                                     TABLE_VALUE if rare() else st.integers(0, 3), max_size=3))
        doc[section] = {**doc.get(section, {}), **table} if not rare() else draw(VALUE_T)
    if draw(st.booleans()):
        doc["presets"] = draw(st.dictionaries(st.sampled_from(["smoke", "cpu"]), st.one_of(
            st.dictionaries(st.sampled_from(["train", "model", "data"]),
                            st.dictionaries(st.sampled_from(KEYS["train"]), TABLE_VALUE, max_size=2), max_size=2),
            VALUE_T), max_size=2))
    return doc


def _toml(doc: dict) -> str:
    return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items()) + "\n"


def _check_recipe(recipe: Recipe) -> None:
    for key, (types, _) in TRAIN_SCHEMA.items():
        assert isinstance(recipe.train[key], types)
    assert recipe.train["epochs"] >= 1 and recipe.train["lr"] > 0 and math.isfinite(recipe.train["lr"])
    assert recipe.dataset in DATASETS and recipe.model["arch"] in ("vgg16", "mlp", "cnn", "uatt")


@FUZZ
@given(doc=recipes(), preset=st.one_of(st.none(), st.sampled_from(["smoke", "cpu", "other"])))
def test_recipe_files_load_or_name_file_and_problem(doc: dict, preset: str | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.toml"
        path.write_text(_toml(doc), encoding="utf-8")
        try:
            recipe = load_recipe(str(path), preset)
        except UserError as e:
            assert "fuzz.toml" in str(e) or "fuzz" in str(e), str(e)
            return
    _check_recipe(recipe)


@FUZZ
@given(text=st.one_of(TEXT, st.binary(max_size=60).map(lambda b: b.decode("latin-1"))))
def test_recipe_text_that_is_not_toml_is_a_user_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "junk.toml"
        path.write_bytes(text.encode("utf-8"))
        with contextlib.suppress(UserError):
            _check_recipe(load_recipe(str(path)))


@FUZZ
@given(d=st.one_of(VALUE_T, recipes().map(lambda r: {**r, "name": "x", "preset": None})))
def test_recipe_from_checkpoint_metadata_is_validated(d) -> None:
    with contextlib.suppress(UserError):
        _check_recipe(Recipe.from_dict(d, where="fuzz"))


# ---- checkpoints and data files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "c.safetensors"
    save_tensors(path, {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)},
                 {"recipe": {"name": "x"}, "epoch": 1})
    return path.read_bytes()


MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4)),
)


def _mutate(raw: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "truncate":
        return raw[:arg % (len(raw) + 1)]
    data = bytearray(raw)
    for pos, value in arg:
        data[pos % len(data)] = value
    return bytes(data)


@FUZZ
@given(mutation=MUTATION)
def test_damaged_checkpoints_are_user_errors(good_checkpoint: bytes, mutation) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.safetensors"
        path.write_bytes(_mutate(good_checkpoint, mutation))
        with contextlib.suppress(UserError):
            tensors, meta = load_tensors(path)
            assert isinstance(tensors, dict) and isinstance(meta, dict)


DTYPES = st.sampled_from([np.uint8, np.int8, np.int16, np.int64, np.uint64, np.float16, np.float32, np.float64,
                          np.bool_, np.complex64])


@st.composite
def npz_arrays(draw) -> dict[str, np.ndarray]:
    n = draw(st.integers(0, 4))
    good = draw(st.booleans())
    xshape = (n, 32, 32, 3) if good else tuple(draw(st.lists(st.integers(0, 33), max_size=5)))
    arrays = {}
    if draw(st.integers(0, 9)) > 0:
        dtype = np.uint8 if good and draw(st.booleans()) else draw(DTYPES)
        x = np.zeros(xshape, dtype=dtype)
        if x.size and np.issubdtype(dtype, np.floating) and draw(st.booleans()):
            x.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        arrays["x"] = x
    if draw(st.integers(0, 9)) > 0:
        yshape = (n,) if draw(st.booleans()) else tuple(draw(st.lists(st.integers(0, 5), max_size=2)))
        values = draw(st.lists(st.integers(-3, 12), min_size=1, max_size=1))[0]
        arrays["y"] = np.full(yshape, values if draw(st.booleans()) else 0).astype(draw(DTYPES))
    if draw(st.booleans()):
        arrays["lossless"] = np.ones(draw(st.integers(0, 5)), dtype=draw(DTYPES))
    if draw(st.booleans()):
        arrays["extra"] = np.array(draw(TEXT))
    return arrays


@FUZZ
@given(arrays=npz_arrays(), compressed=st.booleans())
def test_npz_files_load_validated_or_are_a_user_error(arrays: dict, compressed: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cifar10_test.npz"
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        try:
            split = load_split("cifar10", "test", folder, download=False)
        except UserError as e:
            assert "cifar10_test.npz" in str(e) and "\n" not in str(e)
            return
    assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (3, 32, 32)
    assert len(split.y) == len(split.x) and (len(split.y) == 0 or (split.y.min() >= 0 and split.y.max() < 10))


@pytest.fixture(scope="module")
def good_npz(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, bytes]:
    out = {}
    for compressed in (False, True):
        path = tmp_path_factory.mktemp("npz") / "cifar10_test.npz"
        (np.savez_compressed if compressed else np.savez)(
            path, x=np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3), y=np.array([1, 2]))
        out[compressed] = path.read_bytes()
    return out


@FUZZ
@given(mutation=MUTATION, compressed=st.booleans())
def test_damaged_npz_files_are_user_errors(good_npz: dict, mutation, compressed: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "cifar10_test.npz").write_bytes(_mutate(good_npz[compressed], mutation))
        with contextlib.suppress(UserError):
            split = load_split("cifar10", "test", folder, download=False)
            assert split.x.dtype == torch.uint8 and len(split) == 2


@FUZZ
@given(raw=st.one_of(st.binary(max_size=64),
                     st.builds(lambda d, body: b"\x00\x00\x08" + bytes([d]) + body, st.integers(0, 255),
                               st.binary(max_size=64))),
       gz=st.booleans())
def test_idx_files_read_or_are_a_user_error(raw: bytes, gz: bool) -> None:
    import gzip

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("f.gz" if gz else "f")
        path.write_bytes(gzip.compress(raw) if gz and raw[:1] != b"x" else raw)
        with contextlib.suppress(UserError):
            assert _read_idx(path).dtype == np.uint8
