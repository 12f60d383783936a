"""ecrec.io, ecrec.profiles and ecrec.text: atomic outputs, profiles, the offline model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ecrec import io, profiles, text


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    io.atomic_write_text(target, "old")

    def broken(path):
        path.write_text("half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"], "temporary file left behind"


def test_atomic_write_through_a_symlink_replaces_the_target(tmp_path):
    """Writing to a link updates the file it points to and keeps the link (issue 22.10)."""
    import os

    real = tmp_path / "real" / "metrics.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "metrics.json"
    link.symlink_to(real)
    assert io.atomic_write_text(link, "new") == link
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link is still a link, to the same file
    assert real.read_text() == "new" and link.read_text() == "new"
    assert sorted(p.name for p in real.parent.iterdir()) == ["metrics.json"]  # no temporary file left
    # a dangling link gets its target created
    dangling = tmp_path / "d.json"
    dangling.symlink_to(tmp_path / "real" / "later.json")
    io.atomic_write_text(dangling, "x")
    assert dangling.is_symlink() and (tmp_path / "real" / "later.json").read_text() == "x"
    # a link to a folder above the file: the file inside the real folder is written
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    io.atomic_write_text(tmp_path / "alias" / "metrics.json", "via folder")
    assert real.read_text() == "via folder" and (tmp_path / "alias").is_symlink()


def test_write_metrics_records_context(tmp_path):
    started = 1_000.0
    path = io.write_metrics(
        tmp_path, {"auc": np.float32(0.75), "curve": np.array([1, 2])},
        profile="smoke", seed=3, started=started, device="cpu",
    )
    record = json.loads(path.read_text())
    assert record["metrics"] == {"auc": 0.75, "curve": [1, 2]}
    assert (record["profile"], record["seed"], record["device"]) == ("smoke", 3, "cpu")
    assert record["wall_time_s"] > 0
    assert record["versions"]["numpy"] == np.__version__
    assert io.read_metrics(tmp_path) == record


def test_write_metrics_refuses_nan(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        io.write_metrics(tmp_path, {"auc": math.nan}, profile="smoke", seed=0, started=0.0, device="cpu")
    assert not (tmp_path / "metrics.json").exists()


def test_resolve_profile(monkeypatch):
    assert "cpu" in profiles.PROFILES
    monkeypatch.setattr(profiles, "has_cuda", lambda: False)
    assert profiles.resolve_profile("auto") == "smoke"
    assert profiles.resolve_profile("auto", ("smoke", "cpu", "full")) == "cpu"
    assert profiles.resolve_profile("full") == "full"
    # an explicit cpu on a chapter without cpu sizes runs its smoke sizes
    assert profiles.resolve_profile("cpu") == "smoke"
    assert profiles.resolve_profile("cpu", ("smoke", "cpu", "full")) == "cpu"
    monkeypatch.setattr(profiles, "has_cuda", lambda: True)
    assert profiles.resolve_profile("auto", ("smoke", "cpu", "full")) == "full"
    assert profiles.resolve_profile("cpu") == "smoke"  # cpu means CPU sizes, GPU or not
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        profiles.resolve_profile("fast")
    with pytest.raises(ValueError, match="resolves to 'smoke', which this notebook does not define"):
        profiles.resolve_profile("cpu", ("full",))


def test_explain_profile_says_why(monkeypatch):
    monkeypatch.setattr(profiles, "has_cuda", lambda: False)
    assert profiles.explain_profile("auto", ("smoke", "cpu", "full")) == (
        "cpu", "no CUDA GPU; this chapter has cpu sizes")
    assert profiles.explain_profile("cpu")[0] == "smoke"
    assert "no cpu sizes" in profiles.explain_profile("cpu")[1]
    assert profiles.explain_profile("smoke") == ("smoke", "")


def test_pick_sizes(monkeypatch, capsys):
    monkeypatch.setattr(profiles, "has_cuda", lambda: False)
    sizes = {"smoke": {"n": 10, "epochs": 1}, "full": {"n": 1000, "epochs": 5}}
    assert profiles.pick_sizes("auto", sizes) == ("smoke", {"n": 10, "epochs": 1})
    assert capsys.readouterr().out.splitlines() == [
        "profile: auto -> smoke (no CUDA GPU; this chapter has no cpu sizes, its smoke sizes are its CPU run)"]
    assert profiles.pick_sizes("full", sizes, {"epochs": 2}) == ("full", {"n": 1000, "epochs": 2})
    assert capsys.readouterr().out.splitlines() == ["profile: full", "sizes overridden: {'epochs': 2}"]
    assert profiles.pick_sizes("full", sizes, verbose=False) == ("full", {"n": 1000, "epochs": 5})
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match=r"unknown size\(s\) \['batch'\]"):
        profiles.pick_sizes("smoke", sizes, {"batch": 4})
    with pytest.raises(ValueError, match="same sizes"):
        profiles.pick_sizes("smoke", {"smoke": {"n": 1}, "full": {"m": 2}})


def test_pick_sizes_prints_the_estimate_and_never_returns_it(monkeypatch, capsys):
    monkeypatch.setattr(profiles, "has_cuda", lambda: False)
    sizes = {
        "smoke": {"n": 10, "_minutes": 3},
        "cpu": {"n": 100, "_minutes": (10, 12)},
        "full": {"n": 1000},  # an estimate is optional, per profile
    }
    assert profiles.pick_sizes("auto", sizes) == ("cpu", {"n": 100})
    assert capsys.readouterr().out.splitlines() == [
        "profile: auto -> cpu (no CUDA GPU; this chapter has cpu sizes)", "expected wall time: about 10-12 min"]
    assert profiles.pick_sizes("smoke", sizes, {"n": 5}) == ("smoke", {"n": 5})
    assert capsys.readouterr().out.splitlines()[-1] == "expected wall time: about 3 min for the unmodified sizes"
    assert profiles.pick_sizes("full", sizes) == ("full", {"n": 1000})
    assert "expected" not in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"unknown size\(s\) \['_minutes'\]"):
        profiles.pick_sizes("smoke", sizes, {"_minutes": 1})
    with pytest.raises(ValueError, match="must be minutes"):
        profiles.pick_sizes("smoke", {"smoke": {"n": 1, "_minutes": "soon"}, "full": {"n": 2}})


def test_seed_everything_does_what_it_says(monkeypatch):
    import random

    import torch

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        draws = []
        for _ in range(2):
            profiles.seed_everything(123)
            draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
        assert draws[0] == draws[1]
        profiles.seed_everything(124)
        assert (random.random(), np.random.rand(), torch.rand(1).item()) != draws[0]
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        # it promises nothing about hash(): it leaves PYTHONHASHSEED alone
        assert "PYTHONHASHSEED" not in __import__("os").environ
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    with pytest.raises(TypeError, match="seed must be an int"):
        profiles.seed_everything(1.5)
    with pytest.raises(TypeError, match="seed must be an int"):
        profiles.seed_everything(True)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        profiles.seed_everything(-1)


@pytest.fixture
def umask():
    import os

    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask):
        os.umask(mask)

    yield set_mask
    os.umask(old)


def test_atomic_write_honours_the_umask(tmp_path, umask):
    import os
    import stat

    def mode(path):
        return stat.S_IMODE(os.stat(path).st_mode)

    umask(0o022)
    assert io.current_umask() == 0o022
    assert mode(io.atomic_write_text(tmp_path / "a.json", "{}")) == 0o644
    umask(0o077)
    assert io.current_umask() == 0o077
    assert mode(io.atomic_write_text(tmp_path / "b.json", "{}")) == 0o600
    # replacing a file keeps that file's mode
    os.chmod(tmp_path / "a.json", 0o640)
    io.atomic_write_text(tmp_path / "a.json", "[]")
    assert mode(tmp_path / "a.json") == 0o640 and (tmp_path / "a.json").read_text() == "[]"
    # figures too
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ecrec import plots

    umask(0o002)
    fig, _ = plt.subplots()
    assert mode(plots.save(fig, tmp_path, "fig")) == 0o664
    plt.close(fig)
    with pytest.raises(ValueError, match="plain file name"):
        plots.save(fig, tmp_path, "../escape")


@pytest.fixture(scope="module")
def minilm():
    return text.load_tokenizer(), text.load_encoder()


def test_encode_texts_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["WHITE HANGING HEART T-LIGHT HOLDER", "REGENCY CAKESTAND 3 TIER", "JUMBO BAG RED RETROSPOT", "PEN"]
    tokenizer, model = minilm
    ours = text.encode_texts(texts, tokenizer=tokenizer, model=model, batch_size=3)
    oracle = SentenceTransformer(text.model_path(), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, oracle, atol=2e-5)
    # Length-sorted batching must not change any vector.
    one_by_one = np.vstack([text.encode_texts([t], tokenizer=tokenizer, model=model) for t in texts])
    np.testing.assert_allclose(ours, one_by_one, atol=2e-5)


def test_encode_texts_rejects_non_strings(minilm):
    tokenizer, model = minilm
    with pytest.raises(TypeError, match="element 1 is float"):
        text.encode_texts(["ok", float("nan")], tokenizer=tokenizer, model=model)


# --- declared dependencies ------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(path) -> dict[str, str]:
    """name -> the whole line, for each requirement or constraint line of ``path``."""
    import re

    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        out[_norm(re.match(r"[A-Za-z0-9_.\-]+", line).group(0))] = line
    return out


def test_every_imported_package_is_declared():
    import ast
    import sys
    from importlib import metadata

    local = {"ecrec", "conftest", "tests", "benchmarks"} | {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    imported = set()
    for folder in ("ecrec", "tests", "benchmarks", "notebooks"):
        for path in (ROOT / folder).glob("**/*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = sorted(imported - set(sys.stdlib_module_names) - local - {"__future__"})
    dists = metadata.packages_distributions()
    declared = _requirement_names(ROOT / "requirements.txt")
    missing = {m: dists.get(m) for m in third_party if not any(_norm(d) in declared for d in dists.get(m, []))}
    assert not missing, f"imported but not declared in requirements.txt: {missing}"


def test_constraints_pin_every_requirement_and_torch_is_a_series():
    required = _requirement_names(ROOT / "requirements.txt")
    pinned = _requirement_names(ROOT / "constraints.txt")
    assert not [n for n in required if n not in pinned], "requirements without a constraint"
    loose = [line for n, line in pinned.items() if n != "torch" and "==" not in line]
    assert not loose, f"constraints must pin exact versions: {loose}"
    torch_spec = pinned["torch"]
    assert "==" not in torch_spec, "torch is a series (a CPU or CUDA build of it must satisfy it), not a pin"
    from importlib import metadata

    from packaging.specifiers import SpecifierSet

    assert metadata.version("torch") in SpecifierSet(torch_spec.removeprefix("torch"), prereleases=True)
    # the README's CPU-only install names the same series
    readme = (ROOT / "README.md").read_text()
    assert f'pip install "{torch_spec}" --index-url https://download.pytorch.org/whl/cpu' in readme
    assert "pip install -r requirements.txt -c constraints.txt" in readme
    assert "pip install -r requirements.txt -c constraints.txt" in (ROOT / ".ci" / "run").read_text()
