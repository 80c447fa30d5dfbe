#!/bin/bash
# Install everything the test suite needs (Python packages, Krita, Xvfb, the GIMP 3 chroot) and run it all.
# usage: install/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  install/hosts.sh || echo "[test.sh] editor hosts could not be provisioned; their tests will skip" >&2
fi
python3 -m pip install -q -e ".[test]"
exec python3 -m pytest "$@"
