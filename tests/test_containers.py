"""The container recipes (Dockerfile, apptainer.def). Neither engine runs on these machines, so
the recipes are checked as text: the same base, the same pinned requirements as `make install`
and nothing installed beside them, the project's folders copied, the `cccad` entry point, the
image's build metadata where the run manifest looks for it."""
import re

import pytest

from conftest import ROOT
from cccad.cluster import Profile
from cccad.runinfo import IMAGE_BUILD

RECIPES = {"Dockerfile": ROOT / "Dockerfile", "apptainer.def": ROOT / "apptainer.def"}


def commands(text: str) -> list[str]:
    """Shell commands of a recipe, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", text))
    return [c.strip() for line in text.splitlines() for c in re.split(r"&&|;", line) if c.strip()]


def test_requirements_are_all_pinned_and_the_makefile_installs_them():
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9.+\-]*", p) for p in pins), \
        [p for p in pins if "==" not in p]
    assert "pip install --quiet -r requirements.txt" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_installs_exactly_the_pins(name):
    text = RECIPES[name].read_text()
    installs = [c for c in commands(text) if re.search(r"\bpip3? install\b", c)]
    assert len(installs) == 2, installs
    assert re.search(r"pip install -r \S*requirements\.txt$", installs[0]), installs[0]
    assert re.search(r"pip install --no-deps -e \S+$", installs[1]), installs[1]  # the project, nothing pulled in
    assert not any(re.search(r"\bconda\b|\buv pip\b|\bpipx\b", c) for c in commands(text))


def test_recipes_share_the_cuda_base_and_copy_the_project():
    docker, apptainer = (RECIPES[n].read_text() for n in RECIPES)
    (base,) = re.findall(r"(?m)^FROM (\S+)", docker)
    assert "cuda" in base and re.search(rf"(?m)^From: {re.escape(base)}$", apptainer)
    for folder in ("cccad", "configs", "jobs", "slurm", "requirements.txt", "pyproject.toml"):
        assert re.search(rf"(?m)^COPY .*\b{re.escape(folder)}\b", docker), folder
        assert re.search(rf"(?m)^\s+{re.escape(folder)} /opt/cccad/{re.escape(folder)}$", apptainer), folder


def test_recipes_run_cccad_and_record_their_build_where_the_manifest_reads_it():
    docker, apptainer = (RECIPES[n].read_text() for n in RECIPES)
    assert 'ENTRYPOINT ["cccad"]' in docker and re.search(r"%runscript\s+exec cccad \"\$@\"", apptainer)
    where = "/opt/cccad/" + IMAGE_BUILD.name  # the project root inside both images
    assert IMAGE_BUILD.parent == ROOT and where in docker and where in apptainer
    assert "git_commit" in docker and "build_date" in docker and "build_date" in apptainer


def test_profile_with_an_image_runs_jobs_inside_it():
    python = Profile(container_image="/shared/cccad.sif").python()
    assert python == "apptainer exec --nv --env CCCAD_IMAGE=/shared/cccad.sif /shared/cccad.sif python"
    assert Profile().python().endswith("python") and "apptainer" not in Profile().python()
