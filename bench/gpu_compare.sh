#!/usr/bin/env bash
# The README's GPU comparison in one command, sized for a short GPU lease (< 8 minutes on an
# H100/H200): our CLIP, MaskCLIP and efficient steps (bf16 matrix products, attention='auto')
# and open_clip's own step (AMP bf16, fused AdamW; eager and torch.compile) at ViT-B/16, batch
# 256, on the same GPU; then our CLIP step with the einsum attention, to check what 'auto' picks.
#
#   bash bench/gpu_compare.sh              # results: $OUT/gpu_steps.jsonl (OUT defaults to .)
#
# A GPU host without ml_collections / open_clip_torch / ftfy (and no internet) takes them as
# wheels in .whl/, downloaded beforehand where pip works:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl ml_collections open_clip_torch ftfy wcwidth
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/maskclip_site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/maskclip_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
SIZE=${SIZE:-ViT-B/16}
BATCH=${BATCH:-256}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

timeout 380 python3 bench/train_step.py --size "$SIZE" --batch "$BATCH" --steps 10 --warmup 3 \
  --variants clip maskclip efficient --open_clip --open_clip_modes eager compile \
  --timeout 170 --json "$OUT/gpu_steps.jsonl"
timeout 90 python3 bench/train_step.py --size "$SIZE" --batch "$BATCH" --steps 10 --warmup 3 \
  --variants clip --attention einsum --timeout 85 --json "$OUT/gpu_steps.jsonl"
