#!/usr/bin/env bash
# Install dicom-gateway into .venv in this checkout, on Debian or Ubuntu.
#
#   sudo bash scripts/install.sh          # then: .venv/bin/dicom-gateway run
#   bash scripts/install.sh               # as a user: sudo is used for apt-get only, if needed
#   bash scripts/install.sh -e '.[test]'  # other `pip install` arguments instead of '.'
#
# Steps (the Dockerfile runs this same script):
#   1. find a Python >= 3.11 whose venv module works; only when there is none,
#      apt-get install python3 python3-venv (or python3.1X + python3.1X-venv);
#   2. create .venv in the checkout (kept when it already works);
#   3. pip install the gateway into it.
# Idempotent: a second run installs no system package and reuses .venv.
# Run as root in a checkout owned by someone else (e.g. with sudo), steps 2-3 run as
# the checkout's owner, so the checkout does not fill up with root-owned files.
# PYTHON=/path/to/python3.X picks the interpreter.
#
# scripts/test.sh sources this file for its helpers, then calls install_main.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
umask 022

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
APT_UPDATED=0

say() { echo "${0##*/}: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# -- privileges -------------------------------------------------------------------------
is_root() { [ "$(id -u)" -eq 0 ]; }

as_root() {
  if is_root; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo env DEBIAN_FRONTEND=noninteractive "$@"
  else
    die "need root for: $* (run as root, or install sudo)"
  fi
}

OWNER="$(stat -c %U "$REPO")"
OWNER_HOME=""
if is_root && [ "$OWNER" != root ] && [ "$OWNER" != UNKNOWN ] && command -v runuser >/dev/null 2>&1; then
  OWNER_HOME="$(getent passwd "$OWNER" | cut -d: -f6)"
else
  OWNER=""
fi

# Run a command as the checkout's owner (when root in someone else's checkout), else as is.
# The owner gets a plain system PATH with .venv/bin first: root's PATH may hold
# directories (pyenv shims under /root) that the owner cannot read.
as_owner() {
  if [ -n "$OWNER" ]; then
    runuser -u "$OWNER" -- env HOME="${OWNER_HOME:-/nonexistent}" \
      PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$@"
  else
    "$@"
  fi
}

# -- apt --------------------------------------------------------------------------------
# Packages of "$@" that are not installed, one a line.
missing_pkgs() {
  local p st
  for p in "$@"; do
    st="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
    [[ $st == ii* ]] || echo "$p"
  done
}

apt_update_once() {
  [ "$APT_UPDATED" = 1 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script is for Debian/Ubuntu"
  say "apt-get update"
  as_root apt-get update -q
  APT_UPDATED=1
}

apt_install() {
  local need
  need="$(missing_pkgs "$@")"
  [ -n "$need" ] || return 0
  apt_update_once
  # shellcheck disable=SC2086  # one package a word
  say "apt-get install" $need
  # shellcheck disable=SC2086
  as_root apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $need
}

apt_has() { apt-cache show "$1" >/dev/null 2>&1; }

# -- python + venv ----------------------------------------------------------------------
py_ok() { as_owner "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

# Print the real path of the first Python >= 3.11 on PATH (or $PYTHON) the owner can run.
find_python() {
  local name cand real
  for name in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    while IFS= read -r cand; do
      [ -n "$cand" ] || continue
      real="$(as_owner "$cand" -c 'import sys; print(sys.executable)' 2>/dev/null)" || continue
      if [ -n "$real" ] && py_ok "$real"; then
        echo "$real"
        return 0
      fi
    done < <(if [[ $name == */* ]]; then echo "$name"; else type -aP "$name" 2>/dev/null; fi)
  done
  return 1
}

venv_ok() {
  [ -x "$VENV/bin/python" ] &&
    as_owner "$VENV/bin/python" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' \
      >/dev/null 2>&1
}

make_venv() {
  local py ver v
  if venv_ok; then
    say "using $VENV ($("$VENV/bin/python" -V 2>&1))"
    return 0
  fi
  if ! py="$(find_python)"; then
    apt_install python3 python3-venv
    if ! py="$(find_python)"; then
      apt_update_once # an older release (Ubuntu 22.04) may still package a newer Python
      for v in 3.13 3.12 3.11; do
        if apt_has "python$v-venv"; then
          apt_install "python$v" "python$v-venv"
          break
        fi
      done
      py="$(find_python)" ||
        die "no Python >= 3.11 found or installable; install one and rerun with PYTHON=/path/to/python3.X"
    fi
  fi
  ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  say "creating $VENV with $py ($ver)"
  rm -rf "$VENV"
  if ! as_owner "$py" -m venv "$VENV"; then
    # Debian/Ubuntu ship venv's ensurepip in a separate package.
    rm -rf "$VENV"
    if apt_has "python$ver-venv"; then
      apt_install python3-venv "python$ver-venv"
    else
      apt_install python3-venv
    fi
    as_owner "$py" -m venv "$VENV" || die "$py -m venv failed"
  fi
  venv_ok || die "$VENV does not work (no pip?)"
}

# -- main -------------------------------------------------------------------------------
install_main() {
  [ $# -gt 0 ] || set -- .
  make_venv
  say "pip install $* (in $REPO)"
  (cd "$REPO" && as_owner "$VENV/bin/python" -m pip install -q "$@")
  say "installed: $VENV/bin/dicom-gateway ($("$VENV/bin/dicom-gateway" --version 2>&1))"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  install_main "$@"
fi
