#!/usr/bin/env bash
# Print the Ray authentication token of this host user, making one on first use.
#
#   export RAY_AUTH_TOKEN=$(scripts/ray_auth_token.sh)
#
# The token lives where Ray's own clients look for it (~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH),
# readable by this user only, so `ray job submit` on the host finds it without the variable.
# docker/docker-compose.yml passes RAY_AUTH_TOKEN to the head and the trainer.
set -euo pipefail

path=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
if [ ! -s "$path" ]; then
    mkdir -p "$(dirname "$path")"
    (umask 077 && od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' >"$path")
    echo "made a Ray auth token in $path" >&2
fi
cat "$path"
