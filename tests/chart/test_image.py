"""The container image: Dockerfile rules, and one default image name across chart, operator, Dockerfile and docs.

No Docker engine runs in CI, so the build itself is checked by building the wheel from exactly the build context
the Dockerfile sees (.dockerignore applied): that is what `pip install .` in the image installs.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml
from chartkit import CHART, REPO, one

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _stages() -> list[str]:
    return re.split(r"(?m)^FROM ", DOCKERFILE)[1:]


def _instructions(stage: str) -> str:
    """The stage without comments, continuation lines joined."""
    lines = [line for line in stage.splitlines() if not line.lstrip().startswith("#")]
    return re.sub(r"\\\n", " ", "\n".join(lines))


def test_base_image_is_pinned():
    (base,) = re.findall(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in _stages())
    assert "latest" not in base


def test_multi_stage_with_a_clean_non_root_final_stage():
    stages = _stages()
    assert len(stages) >= 2
    final = _instructions(stages[-1])
    users = re.findall(r"(?m)^USER (\S+)$", final)
    assert users, "the final stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so the kubelet can verify runAsNonRoot"
    # no compilers or package installs in what ships; only the venv is copied from the build stage
    assert not re.search(r"apt-get install|apk add|build-essential|gcc|pip install", final)
    assert "COPY --from=build /opt/rft /opt/rft" in final
    assert "ENTRYPOINT" not in final


def test_image_user_is_the_uid_pods_run_as(render):
    from rft_operator.builders import RUN_AS

    uid = int(re.findall(r"(?m)^USER (\d+)", DOCKERFILE)[-1])
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert uid == RUN_AS == pod["securityContext"]["runAsUser"]


def test_installs_the_project_with_both_entry_points():
    build = _instructions(_stages()[0])
    assert 'pip install ".[${extras}]"' in build and 'extras="runtime,operator"' in build
    assert "rft --help" in build and "rft-operator --help" in build
    assert set(PYPROJECT["project"]["scripts"]) == {"rft", "rft-operator"}
    # the engine extra's torch pin is the one the image uses for the CPU wheel
    engine_torch = next(d for d in PYPROJECT["project"]["optional-dependencies"]["engine"] if d.startswith("torch"))
    (torch_arg,) = re.findall(r"(?m)^ARG TORCH_VERSION=(\S+)$", DOCKERFILE)
    assert engine_torch == f"torch=={torch_arg}"
    # the CPU wheel index is the builder's to pass (TORCH_INDEX_URL), as pip is configured on their machine: no
    # package index address is written into the image's recipe
    assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"' in build
    assert not re.search(r"https?://", build)


def test_the_runtime_image_has_the_ray_that_multi_node_tinker_pods_start():
    # a multi-node Tinker job's head and worker pods run `ray start` in this image (builders._command)
    runtime = PYPROJECT["project"]["optional-dependencies"]["runtime"]
    assert any(re.match(r"ray\[default\]", d) for d in runtime), runtime
    assert 'extras="runtime,operator"' in _instructions(_stages()[0])


def _build_context(dest: Path) -> None:
    """Copy what `docker build .` would send, honouring .dockerignore's allow-list."""
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", ".dockerignore is an allow-list"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    excluded = [p.removeprefix("**/") for p in patterns[1:] if not p.startswith("!")]
    for name in allowed:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name,
                            ignore=lambda _d, names: [n for n in names if any(fnmatch.fnmatch(n, e) for e in excluded)])
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def test_the_build_context_installs_both_entry_points(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    _build_context(context)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist")], cwd=context, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "rft = rft_runtime.cli:main" in entry_points
    assert "rft-operator = rft_operator.main:main" in entry_points
    assert "rft_operator/main.py" in names and "rft_runtime/cli.py" in names
    assert not any(n.startswith(("tests/", "charts/")) for n in names)


def test_default_image_is_the_same_everywhere(render):
    from rft_operator.spec import DEFAULT_IMAGE

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"]
    assert f"{values['image']['repository']}:{chart['appVersion']}" == DEFAULT_IMAGE
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == DEFAULT_IMAGE
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RFT_OPERATOR_DEFAULT_IMAGE"] == DEFAULT_IMAGE
    assert DEFAULT_IMAGE in DOCKERFILE.replace("<version>", chart["appVersion"])
    assert DEFAULT_IMAGE in (REPO / "docs" / "install.md").read_text()
    (version_arg,) = re.findall(r"(?m)^ARG VERSION=(\S+)$", DOCKERFILE)
    assert version_arg == chart["appVersion"]


VERL_DOCKERFILE = REPO / "Dockerfile.verl"
VERL_PINS = REPO / "docker" / "verl-requirements.txt"


def _parsed(path: Path):
    """The Dockerfile as BuildKit's own parser reads it (the `dockerfile` package wraps the Go parser)."""
    import dockerfile

    return dockerfile.parse_file(str(path))


def test_both_dockerfiles_parse_with_the_buildkit_parser():
    for path in (REPO / "Dockerfile", VERL_DOCKERFILE):
        commands = _parsed(path)
        assert [c.cmd for c in commands].count("FROM") >= 2, path
        assert commands[-1].cmd == "CMD"


def test_every_copy_source_is_in_the_build_context(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    _build_context(context)
    for path in (REPO / "Dockerfile", VERL_DOCKERFILE):
        for command in _parsed(path):
            if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
                for source in command.value[:-1]:
                    assert (context / source).exists(), f"{path.name}: COPY {source} is not in the build context"


def test_the_gpu_image_pins_trinity_and_vllm_together():
    pins = [line for line in VERL_PINS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+(\[[a-z0-9,]+\])?==[0-9][0-9A-Za-z.+]*", p) for p in pins), pins
    names = {re.split(r"[\[=]", p)[0] for p in pins}
    assert "trinity-rft[vllm]==0.6.0" in pins, "Trinity-RFT 0.6 is the contract, with its vllm extra"
    assert {"vllm", "torch"} <= names
    # the project's own CPU torch pin never lands in the GPU image: no engine extra there
    build = _instructions(re.split(r"(?m)^FROM ", VERL_DOCKERFILE.read_text())[1])
    assert 'pip install -r docker/verl-requirements.txt ".[runtime,operator,verl]"' in build
    assert "engine" not in build
    for check in ("trinity --help", "rft --help", "rft-operator --help", "ray --version"):
        assert check in build, check


def test_the_gpu_image_has_a_pinned_cuda_base_and_a_clean_non_root_final_stage():
    text = VERL_DOCKERFILE.read_text()
    (base,) = re.findall(r"(?m)^ARG CUDA_IMAGE=(\S+)$", text)
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+(@sha256:[0-9a-f]{64})?", base)
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert all(stage.startswith("${CUDA_IMAGE}") for stage in stages)
    final = _instructions(stages[-1])
    assert re.findall(r"(?m)^USER (\S+)$", final)[-1] == "1000:1000"
    assert not re.search(r"build-essential|gcc|python3-dev|pip install", final)
    assert "COPY --from=build /opt/rft /opt/rft" in final
    (version_arg,) = re.findall(r"(?m)^ARG VERSION=(\S+)$", text)
    assert version_arg == PYPROJECT["project"]["version"]


def test_the_verl_default_image_is_the_same_everywhere(render):
    from rft_operator.settings import Settings
    from rft_operator.spec import DEFAULT_IMAGE, DEFAULT_VERL_IMAGE

    assert DEFAULT_VERL_IMAGE == DEFAULT_IMAGE + "-verl" == Settings().default_verl_image
    assert DEFAULT_VERL_IMAGE in VERL_DOCKERFILE.read_text()
    assert DEFAULT_VERL_IMAGE in (REPO / "docs" / "install.md").read_text()
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RFT_OPERATOR_DEFAULT_VERL_IMAGE"] == DEFAULT_VERL_IMAGE
    pinned = one(render({"jobDefaults": {"verlImage": "registry.local/verl:7"}}), "Deployment")
    env = {e["name"]: e.get("value") for e in pinned["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RFT_OPERATOR_DEFAULT_VERL_IMAGE"] == "registry.local/verl:7"
