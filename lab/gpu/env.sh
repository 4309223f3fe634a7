# Source this first in every command on the GPU machine (device tool), from the repo root:
#   source scripts/gpu_env.sh
# The H200 image lacks pydantic, rfc8785 and pingouin; they travel as wheels in .whl/ (name
# ".whl" in the run's `carry`). Fetch them here with scripts/fetch_gpu_wheels.sh.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
