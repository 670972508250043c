# shellcheck shell=bash
# Shared by bin/run and bin/test: a virtual environment in .venv with the given
# requirements, reinstalled only when the requirements files change, and the Debian
# packages that needs on a new machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -n -u postgres "$@"; fi; }

apt_install() {
    if [ -z "${_APT_UPDATED:-}" ]; then
        as_root apt-get update -qq
        _APT_UPDATED=1
    fi
    echo "installing from Debian: $*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
has_headers() {
    "$1" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}

ensure_venv() {
    local requirements=$1 python=${PYTHON:-python3}
    if ! python_ok "$python"; then
        echo "hashguard needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    # Debian splits venv and the C headers out of python3; pdqhash compiles from source.
    "$python" -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    if ! command -v g++ >/dev/null || ! has_headers "$python"; then
        apt_install g++ python3-dev
    fi
    if ! .venv/bin/python -m pip --version >/dev/null 2>&1 || ! python_ok .venv/bin/python; then
        rm -rf .venv
        "$python" -m venv .venv
    fi
    local stamp digest
    stamp=.venv/.installed-$(basename "$requirements")
    digest=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
        echo "$digest" > "$stamp"
    fi
}
