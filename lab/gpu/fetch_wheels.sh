#!/usr/bin/env bash
# Download (here, with internet to PyPI) the wheels the H200 image lacks, into .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic_core==2.50.5 typing_inspection==0.4.5 annotated_types==0.8.0 \
  rfc8785==0.1.4 pingouin==0.7.0 pandas_flavor==0.8.1 gguf==0.19.0 setuptools==80.9.0
