#!/usr/bin/env bash
# Build the base image docker/Dockerfile's CPU target starts from (debian:bookworm-slim) out of
# Debian's own packages, for machines that reach Debian's package mirror but no container
# registry. With a registry, `docker pull debian:bookworm-slim` does the same job.
#
#   scripts/docker_base_image.sh [IMAGE] [MIRROR]
#
# Needs root (debootstrap writes a root filesystem) and `apt-get install debootstrap`. Does
# nothing when IMAGE already exists; `docker image rm IMAGE` forces a rebuild.
set -euo pipefail

image=${1:-debian:bookworm-slim}
mirror=${2:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}

if "$docker" image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image exists"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "debootstrap needs root: run as root, or pull $image from a registry" >&2
    exit 1
fi
command -v debootstrap >/dev/null || {
    echo "debootstrap is missing: apt-get install debootstrap" >&2
    exit 1
}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# minbase: essential packages and apt only, as the slim image has.
debootstrap --variant=minbase bookworm "$root" "$mirror"
# The slim image's apt sources point at the same mirror; drop the package lists and caches the
# bootstrap left (the Dockerfile runs apt-get update itself).
echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | "$docker" import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$image"
echo "built base image $image from $mirror"
