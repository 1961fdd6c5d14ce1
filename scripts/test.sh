#!/usr/bin/env bash
# Install what the tests need, then run them, on Debian or Ubuntu.
#
#   sudo bash scripts/test.sh             # pytest -m "not slow" (what CI runs)
#   sudo bash scripts/test.sh -m slow     # the soak variants; any pytest arguments pass through
#
# Steps:
#   1. everything scripts/install.sh does, with the package installed editable plus the
#      [test] extras: pip install -e '.[test]' into .venv;
#   2. the real peers the tests talk to: apt-get install dcmtk orthanc orthanc-dicomweb
#      dicom3tools (dciodvfy checks de-identified objects)
#      (only what is missing; Orthanc's system service is kept from starting: the tests
#      start their own Orthanc on free ports);
#   3. the shared DICOM corpus: bash ../shared/corpus/build.sh, into $CORPUS_DIR
#      (default ../corpus-data; exported for the tests);
#   4. .venv/bin/python -m pytest "$@". "No tests collected" (pytest exit 5) is a failure.
# Root is needed only to install missing system packages (sudo is used if available).
set -euo pipefail

# shellcheck source=scripts/install.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/install.sh" # helpers, REPO, VENV

POLICY_RC=/usr/sbin/policy-rc.d
POLICY_CREATED=0

remove_policy() {
  if [ "$POLICY_CREATED" = 1 ]; then
    as_root rm -f "$POLICY_RC" || true
    POLICY_CREATED=0
  fi
}

# Orthanc's package enables and starts a system service (port 4242/8042, /var/lib/orthanc).
# The tests do not want it: disable and stop it, but only when this run installed Orthanc.
quiet_orthanc_service() {
  local booted=0
  [ -d /run/systemd/system ] && booted=1
  if command -v systemctl >/dev/null 2>&1; then
    if [ "$booted" = 1 ]; then
      as_root systemctl disable --now orthanc.service >/dev/null 2>&1 || true
    else
      as_root systemctl disable orthanc.service >/dev/null 2>&1 || true
    fi
  fi
  if [ -x /etc/init.d/orthanc ]; then
    if [ "$booted" = 0 ]; then
      as_root /etc/init.d/orthanc stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
      as_root update-rc.d orthanc disable >/dev/null 2>&1 || true
    fi
  fi
}

install_peers() {
  local need new_orthanc=0
  need="$(missing_pkgs dcmtk orthanc orthanc-dicomweb dicom3tools)"
  [ -n "$need" ] || return 0
  if grep -qx orthanc <<<"$need"; then
    new_orthanc=1
  fi
  # invoke-rc.d / deb-systemd-invoke start nothing while policy-rc.d exits 101.
  if [ ! -e "$POLICY_RC" ]; then
    as_root sh -c "printf '#!/bin/sh\n# temporary, from dicom-gateway scripts/test.sh\nexit 101\n' >'$POLICY_RC' && chmod 0755 '$POLICY_RC'"
    POLICY_CREATED=1
    trap remove_policy EXIT
  fi
  apt_install dcmtk orthanc orthanc-dicomweb dicom3tools
  remove_policy
  trap - EXIT
  if [ "$new_orthanc" = 1 ]; then
    quiet_orthanc_service
  fi
}

build_corpus() {
  local build="$REPO/../shared/corpus/build.sh" rc=0
  [ -f "$build" ] || die "$build not found: the tests need ../shared beside the checkout"
  # The build fetches two worklist sources with apt-get download: it needs package lists.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    if is_root || command -v sudo >/dev/null 2>&1; then
      apt_update_once
    fi
  fi
  CORPUS_DIR="${CORPUS_DIR:-$REPO/../corpus-data}"
  as_owner mkdir -p "$CORPUS_DIR"
  CORPUS_DIR="$(cd "$CORPUS_DIR" && pwd)"
  export CORPUS_DIR
  say "building the shared corpus in $CORPUS_DIR"
  (cd "$REPO" && as_owner env CORPUS_DIR="$CORPUS_DIR" bash ../shared/corpus/build.sh) || rc=$?
  if [ "$rc" != 0 ]; then
    [ -s "$CORPUS_DIR/MANIFEST.tsv" ] || die "corpus build failed (exit $rc)"
    say "warning: corpus build incomplete (exit $rc); tests needing the missing files will fail"
  fi
}

test_main() {
  [ $# -gt 0 ] || set -- -m "not slow"
  install_main -e '.[test]'
  install_peers
  build_corpus
  # Orthanc lives in /usr/sbin, which a non-root PATH may lack.
  case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
  export PATH
  local rc=0
  say "pytest$(printf ' %q' "$@")"
  (cd "$REPO" && as_owner env CORPUS_DIR="$CORPUS_DIR" "$VENV/bin/python" -m pytest "$@") || rc=$?
  if [ "$rc" = 5 ]; then
    say "error: pytest collected no tests (exit 5): failing"
    rc=1
  fi
  return "$rc"
}

test_main "$@"
