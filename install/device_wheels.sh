# Sourced by the device scripts (bench/gpu_perf_check.sh, models/gpu_train_session.sh) from the repo root:
# the device image lacks pyzmq / msgpack / pymatting, so wheels carried in .whl/ (pip download
# --python-version 3.12 --only-binary=:all: pyzmq msgpack pymatting -d .whl) go to /tmp/site, once per
# shell, and onto PYTHONPATH. Returns 3 if the install fails.
export PYTHONUNBUFFERED=1
if [ -d .whl ] && [[ ":${PYTHONPATH:-}:" != *":/tmp/site:"* ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || return 3
fi
