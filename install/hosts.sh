#!/bin/bash
# Provision the editor hosts the plug-in tests run in (Debian 12 bookworm, root):
#   * Krita 5.1.5 + PyQt5 + Xvfb from bookworm (apt)
#   * GIMP 3.0.x in a Debian 13 (trixie) chroot built with mmdebstrap (bookworm has only GIMP 2.10, no Python)
#   * Krita 5.2.x in the same chroot (target krita52): the createTransparencyMask path, Python 3.13
# Idempotent and fast when already done (checks binaries + a stamp file; the chroot is built in a
# temporary directory and renamed only on success, so an interrupted run never leaves a half chroot).
#
# usage: install/hosts.sh [krita] [gimp] [krita52]     (default: all three)
# env:   SEMANTIC_MATTE_CHROOT  chroot path (default /var/cache/semantic-matte/trixie)
#        DEBIAN_MIRROR          (default http://deb.debian.org/debian)
set -euo pipefail

CHROOT=${SEMANTIC_MATTE_CHROOT:-/var/cache/semantic-matte/trixie}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump when the package set changes so existing chroots get rebuilt.
STAMP_VERSION=1
CHROOT_PKGS=gimp,python3-gi,python3-zmq,python3-msgpack,xvfb,xauth,procps
KRITA_PKGS="krita python3-pyqt5 python3-sip python3-zmq python3-msgpack xvfb xauth"

want_krita=0; want_gimp=0; want_krita52=0
if [ $# -eq 0 ]; then want_krita=1; want_gimp=1; want_krita52=1; fi
for a in "$@"; do
  case "$a" in
    krita) want_krita=1 ;;
    gimp) want_gimp=1 ;;
    krita52) want_gimp=1; want_krita52=1 ;;  # lives in the GIMP chroot
    *) echo "usage: $0 [krita] [gimp] [krita52]" >&2; exit 2 ;;
  esac
done

log() { echo "[hosts.sh] $*"; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (apt-get, mmdebstrap, chroot)"; exit 1
fi

apt_updated=0
apt_install() {
  # Only touch apt when something is actually missing (keeps re-runs at well under a second).
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated = 0 ]; then apt-get update -q; apt_updated=1; fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

if [ $want_krita = 1 ]; then
  t0=$(date +%s)
  # python3-pyqt5 is only a Recommends of krita, but without it the Python plug-in manager is empty.
  # shellcheck disable=SC2086
  apt_install $KRITA_PKGS
  command -v kritarunner >/dev/null && command -v xvfb-run >/dev/null
  log "krita ready: $(dpkg-query -W -f='${Version}' krita) ($(( $(date +%s) - t0 )) s)"
fi

if [ $want_gimp = 1 ]; then
  t0=$(date +%s)
  stamp="$CHROOT/.semantic-matte-stamp"
  if [ -x "$CHROOT/usr/bin/gimp-console-3.0" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$STAMP_VERSION" ]; then
    log "gimp chroot ready: $CHROOT ($(( $(date +%s) - t0 )) s)"
  else
    apt_install mmdebstrap
    tmp="$CHROOT.tmp.$$"
    # A stale bind mount from an interrupted test run would make rm -rf walk into /tmp.
    for d in "$CHROOT".tmp.*; do
      [ -e "$d" ] || continue
      mountpoint -q "$d/tmp" && umount "$d/tmp" || true
      rm -rf --one-file-system "$d"
    done
    mkdir -p "$(dirname "$CHROOT")"
    log "building trixie chroot (GIMP 3) in $tmp (about 40 s, 850 MB)"
    mmdebstrap --mode=root --variant=apt --include="$CHROOT_PKGS" trixie "$tmp" "$MIRROR"
    echo "$STAMP_VERSION" > "$tmp/.semantic-matte-stamp"
    if [ -e "$CHROOT" ]; then
      mountpoint -q "$CHROOT/tmp" && umount "$CHROOT/tmp" || true
      rm -rf --one-file-system "$CHROOT"
    fi
    mv "$tmp" "$CHROOT"
    log "gimp chroot ready: $CHROOT, GIMP $(chroot "$CHROOT" dpkg-query -W -f='${Version}' gimp) ($(( $(date +%s) - t0 )) s)"
  fi
fi

if [ $want_krita52 = 1 ]; then
  t0=$(date +%s)
  if [ -x "$CHROOT/usr/bin/kritarunner" ] && chroot "$CHROOT" python3 -c "import PyQt5" 2>/dev/null; then
    log "krita 5.2 (chroot) ready ($(( $(date +%s) - t0 )) s)"
  else
    log "installing Krita 5.2 + PyQt5 into $CHROOT (about 20 s, +680 MB)"
    chroot "$CHROOT" apt-get update -q  # mmdebstrap leaves no package lists behind
    chroot "$CHROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      krita python3-pyqt5
    log "krita 5.2 (chroot) ready: $(chroot "$CHROOT" dpkg-query -W -f='${Version}' krita) ($(( $(date +%s) - t0 )) s)"
  fi
fi
