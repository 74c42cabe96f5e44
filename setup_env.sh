# Source this file (`source setup_env.sh`): it makes a virtual environment with the project installed, once.
#
#   FSPO_VENV=path        where the virtualenv lives (default: .venv in the repository)
#   FSPO_INSTALL_APT=1    install the system library libsndfile1 with apt-get when it is missing
#                         (tests and CI set it; otherwise you are told the command and the script stops)
#
# Afterwards `fairseq2`, `fspo-tiny-assets` and `python` are the virtualenv's.

_fspo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_fspo_venv="${FSPO_VENV:-$_fspo_root/.venv}"

_fspo_setup() {
    local py
    py="$(command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)"
    if ! "$py" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
        echo "fspo: Python 3.10 to 3.12 is needed (fairseq2 0.4.6); found $("$py" --version 2>&1) at $py." >&2
        return 1
    fi

    # (no `ldconfig | grep -q`: under `set -o pipefail` grep's early exit would fail the pipe)
    local libs
    libs="$(ldconfig -p 2>/dev/null || true)"
    if [[ "$libs" != *libsndfile.so.1* ]]; then
        if [ "${FSPO_INSTALL_APT:-0}" = 1 ] && command -v apt-get >/dev/null; then
            echo "fspo: installing libsndfile1 (needed by fairseq2) with apt-get"
            local sudo=""
            [ "$(id -u)" = 0 ] || sudo="sudo"
            $sudo apt-get update -qq && $sudo apt-get install -y -qq libsndfile1 >/dev/null || return 1
        else
            echo "fspo: fairseq2 needs the system library libsndfile1, which is missing. Install it with:" >&2
            echo "    sudo apt-get install -y libsndfile1     (Debian/Ubuntu; conda: conda install -c conda-forge libsndfile)" >&2
            return 1
        fi
    fi

    if [ ! -x "$_fspo_venv/bin/python" ]; then
        echo "fspo: creating the virtualenv $_fspo_venv"
        "$py" -m venv "$_fspo_venv" || return 1
    fi

    # Reinstall only when setup.py changed since the last install.
    local stamp="$_fspo_venv/.fspo-setup-stamp" want
    want="$(sha256sum "$_fspo_root/setup.py" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "fspo: installing the project and fairseq2 0.4.6 into $_fspo_venv (a few minutes the first time)"
        "$_fspo_venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
        if ! "$_fspo_venv/bin/python" -m pip install -q -e "$_fspo_root[data,dev]" 2> >(grep -v '^WARNING: Location' >&2); then
            echo "fspo: pip install failed (see above)." >&2
            return 1
        fi
        echo "$want" > "$stamp"
    fi

    export PATH="$_fspo_venv/bin:$PATH"
    export VIRTUAL_ENV="$_fspo_venv"
    # Our extension's errors must stop a run instead of being logged and skipped by fairseq2.
    export FAIRSEQ2_EXTENSION_TRACE=1
    # tiktoken caches tokenizer files by path; regenerated tiny tokenizers must not read stale.
    export TIKTOKEN_CACHE_DIR=""
}

_fspo_setup
