#!/usr/bin/env bash
# `make docker-demo`: the compose path, built and run for real on a machine without a GPU.
#
#  1. the base image (debian:bookworm-slim), from Debian's packages where no registry answers
#     (scripts/docker_base_image.sh);
#  2. the wheels of requirements/lock.txt and torch's CPU build, downloaded by this machine's
#     pip into docker/wheels/ (the image build reaches no index);
#  3. the image, docker/Dockerfile with VARIANT=cpu, as vidrl:cpu for this user's uid;
#  4. `docker compose --profile cpu up`: a Ray head and a trainer node; the trainer runs
#     `vidrl demo` into runs/VIDRL_DEMO_NAME; this script waits for it and checks the demo's
#     summary (its learning check, and that the host user owns what it wrote);
#  5. a second, short job sent from the host with `ray job submit` to the compose head
#     (2 GRPO steps from the demo's SFT warm start), and its status;
#  6. `docker compose down` (containers and network; the image stays), also on failure.
#
# Prerequisites: a running Docker daemon with BuildKit (Docker >= 23, or 20.10 used with
# DOCKER_BUILDKIT=1) and compose (`docker compose` or docker-compose >= 1.28); `make install`
# for the host's pip and `ray` client. On Debian, as root:
#   apt-get install docker.io docker-compose debootstrap && (dockerd >/var/log/dockerd.log 2>&1 &)
# Environment: VIDRL_DEMO_NAME (default docker-demo), VIDRL_CPU_IMAGE (default vidrl:cpu),
# VIDRL_DEMO_TIMEOUT seconds for the demo (default 1800), RAY_AUTH_TOKEN (default: the token of
# scripts/ray_auth_token.sh).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
demo_name=${VIDRL_DEMO_NAME:-docker-demo}
image=${VIDRL_CPU_IMAGE:-vidrl:cpu}
timeout_s=${VIDRL_DEMO_TIMEOUT:-1800}
project=vidrl-docker-demo
wheels=docker/wheels
venv=${VIDRL_VENV:-.venv}
uid=$(id -u) # the image's user, so that the host user owns what the containers write

say() { printf '[docker-demo %s] %s\n' "$(date +%T)" "$*"; }
die() {
    printf '[docker-demo] error: %s\n' "$*" >&2
    exit 1
}

# ---- what this machine offers ------------------------------------------------------------
docker info >/dev/null 2>&1 || die "no Docker daemon answers. As root on Debian:
  apt-get install docker.io docker-compose debootstrap && (dockerd >/var/log/dockerd.log 2>&1 &)"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    die "no compose: install the docker compose plugin or docker-compose (>= 1.28, for profiles)"
fi
compose+=(-p "$project" -f docker/docker-compose.yml --profile cpu)

# A client that builds with BuildKit (the Dockerfile's RUN --mount needs it): buildx where it is
# installed, else a client older than 23 whose BuildKit is built in (DOCKER_BUILDKIT=1). Newer
# clients without buildx refuse BuildKit; Debian's docker.io ships its 20.10 client at
# /usr/bin/docker, which may sit behind a newer one on PATH.
build_command() {
    local client major
    for client in docker /usr/bin/docker; do
        command -v "$client" >/dev/null || continue
        if "$client" buildx version >/dev/null 2>&1; then
            echo "$client buildx build --load"
            return
        fi
        major=$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
        if [[ "$major" =~ ^[0-9]+$ ]] && ((major < 23)); then
            echo "env DOCKER_BUILDKIT=1 $client build"
            return
        fi
    done
    die "no docker client here builds with BuildKit: install docker-buildx (or use Docker 20.10's client)"
}
read -r -a build <<<"$(build_command)"
[ -x "$venv/bin/ray" ] || die "$venv/bin/ray is missing: run make install first (the host-side ray client)"

# ---- 1-3: base image, wheels, image --------------------------------------------------------
scripts/docker_base_image.sh
# The wheels are fetched again only when the lock or the torch pin changes.
want=$(cat requirements/lock.txt Makefile | grep -E '==' | sha256sum | cut -d' ' -f1)
if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$want" ]; then
    say "downloading the locked wheels into $wheels (this machine's pip and indexes)"
    torch_pin=$(grep -o 'torch==[0-9.]*' Makefile | head -1)
    setuptools_pin=$("$venv/bin/python" -c 'import setuptools; print("setuptools==" + setuptools.__version__)')
    rm -rf "$wheels" && mkdir -p "$wheels"
    # (The filter drops a warning per package about index folders some machines configure.)
    "$venv/bin/pip" download --quiet --no-deps --dest "$wheels" \
        "$torch_pin" "$setuptools_pin" -r requirements/lock.txt \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
    echo "$want" >"$wheels/.stamp"
fi
say "building $image (${build[*]})"
started=$SECONDS
"${build[@]}" -f docker/Dockerfile --build-arg VARIANT=cpu --build-arg USER_UID="$uid" -t "$image" .
build_s=$((SECONDS - started))
size_mb=$(($(docker image inspect -f '{{.Size}}' "$image") / 1000000))
say "built $image in ${build_s} s, ${size_mb} MB"

# ---- 4: the compose project runs the demo --------------------------------------------------
RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$(scripts/ray_auth_token.sh)}
export RAY_AUTH_TOKEN RAY_AUTH_MODE=token VIDRL_UID=$uid VIDRL_CPU_IMAGE=$image VIDRL_DEMO_NAME=$demo_name
# Made here, so that the host user owns them (docker would make missing ones as root).
mkdir -p data models runs
out=runs/$demo_name
if [ -e "$out" ]; then
    say "removing the previous docker demo's folder $out"
    rm -rf "$out"
fi

down() { "${compose[@]}" down --remove-orphans >/dev/null 2>&1 || true; }
trap 'say "compose down"; down' EXIT
down
started=$SECONDS
"${compose[@]}" up -d --no-build
say "compose up: waiting for the trainer's demo (at most ${timeout_s} s)"
trainer=$("${compose[@]}" ps -q trainer-cpu)
while true; do
    status=$(docker logs "$trainer" 2>&1 | sed -n 's/^vidrl demo exited with status \([0-9]*\)$/\1/p')
    [ -n "$status" ] && break
    if [ "$(docker inspect -f '{{.State.Running}}' "$trainer")" != true ]; then
        docker logs --tail 50 "$trainer" >&2
        die "the trainer container stopped before the demo ended (logs above)"
    fi
    if ((SECONDS - started > timeout_s)); then
        docker logs --tail 50 "$trainer" >&2
        die "the demo ran past ${timeout_s} s (logs above)"
    fi
    sleep 5
done
demo_s=$((SECONDS - started))
if [ "$status" != 0 ]; then
    docker logs --tail 80 "$trainer" >&2
    die "vidrl demo failed in the trainer container with status $status (logs above)"
fi
say "the demo finished in ${demo_s} s (compose up to summary)"
[ -s "$out/summary.json" ] || die "$out/summary.json is missing"
owner=$(stat -c %u "$out/summary.json")
[ "$owner" = "$uid" ] || die "$out/summary.json is owned by uid $owner, not by this user ($uid)"
"$venv/bin/python" - "$out/summary.json" <<'EOF' || die "the demo's learning check failed"
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"learning check: {'passed' if summary['learned'] else 'FAILED'} ({summary['learning_check']})")
sys.exit(0 if summary["learned"] else 1)
EOF

# ---- 5: a job from the host --------------------------------------------------------------
if RAY_AUTH_TOKEN=not-the-token "$venv/bin/ray" job list --address http://127.0.0.1:8265 >/dev/null 2>&1; then
    die "the head answered a client with a wrong token: token authentication is off"
fi
say "the head refuses a client with a wrong token"
job=vidrl-docker-demo-$(date +%s)
say "submitting job $job from the host to the compose head (ray job submit, token auth)"
"$venv/bin/ray" job submit --address http://127.0.0.1:8265 --submission-id "$job" -- \
    vidrl train /workspace/examples/synthetic.yaml \
    model_path="/runs/$demo_name/runs/grpo/sft/hf" data.train_path="/runs/$demo_name/data/train.yaml" \
    data.eval_path=null output_dir="/runs/$demo_name" run_name=submitted \
    trainer.sft_steps=0 trainer.steps=2 trainer.checkpoint_every_steps=2 ||
    say "ray job submit exited with status $?"
# (The SDK, not `ray job status`, whose wording differs per status.)
job_status=$("$venv/bin/python" -c 'import sys
from ray.job_submission import JobSubmissionClient
print(JobSubmissionClient("http://127.0.0.1:8265").get_job_status(sys.argv[1]).value)' "$job")

summary=$(docker logs "$trainer" 2>&1 | sed -n '/^vidrl demo: wrote everything/,/^  took /p')
say "compose down"
down
trap - EXIT

# ---- what it showed --------------------------------------------------------------------------
echo "$summary"
echo
echo "image $image: ${size_mb} MB, built in ${build_s} s; demo through compose: ${demo_s} s"
echo "submitted job $job: $job_status"
[ "$job_status" = SUCCEEDED ] || die "the submitted job did not succeed"
