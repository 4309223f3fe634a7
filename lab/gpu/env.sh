# Source this first in every command on the GPU machine (device tool), from the repository root:
#   source lab/gpu/env.sh
# 1. The GPU image lacks pydantic, rfc8785 and pingouin: they travel as wheels in .whl/ (name ".whl" in
#    the run's `carry`; fetch them here with lab/gpu/fetch_wheels.sh) and install into /tmp/site.
# 2. The repository installs in editable mode without dependencies, so that `import dcr.prereg`,
#    `python3 -m dcr.producers.…` and `python3 -m dcr.cli` resolve the folders through the
#    package-dir mapping of pyproject.toml (the carried setuptools >= 77, which reads the SPDX
#    license field, comes first on PYTHONPATH; gguf reads packaged models).
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . || return 1  # the caller sees a failed install
