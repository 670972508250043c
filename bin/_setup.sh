# Shared by bin/run and bin/test: a virtual environment in .venv with the given
# requirements, reinstalled only when the requirements files change.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

ensure_venv() {
    local requirements=$1 python=${PYTHON:-python3}
    if ! python_ok "$python"; then
        echo "hashguard needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ] || ! python_ok .venv/bin/python; then
        rm -rf .venv
        "$python" -m venv .venv
    fi
    local stamp=.venv/.installed-$(basename "$requirements")
    local digest
    digest=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
        echo "$digest" > "$stamp"
    fi
}

# Installs Debian packages when missing (root, or sudo without a password).
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    if [ -z "${_APT_UPDATED:-}" ]; then
        $sudo apt-get update -qq
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
