#!/bin/bash
# Install Semantic Matte and run the main job: matte the bundled example with the default model.
# usage: install/setup.sh            (writes out/lemur_alpha.png and out/lemur_cutout.png)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
mkdir -p out
semantic-matte matte backend/examples/lemur.png backend/examples/lemur_trimap.png \
  -o out/lemur_alpha.png --cutout out/lemur_cutout.png --semantic-map out/lemur_semantic.png
