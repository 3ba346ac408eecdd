#!/usr/bin/env bash
# Training on a Cloud TPU pod slice: one process per TPU VM worker, all running the same command.
#
#   launch/tpu_pod.sh create                       # the TPU VMs (once)
#   launch/tpu_pod.sh install                      # this checkout's HEAD + jax[tpu] on every worker
#   launch/tpu_pod.sh train --config configs/maskclip_vit_b16_yfcc15m.py \
#       --workdir gs://BUCKET/runs/maskclip_b16 \
#       --config.input.train_data='wds:gs://BUCKET/yfcc/{00000..04095}.tar'
#   launch/tpu_pod.sh stop                         # ends training on every worker (it saves first)
#   launch/tpu_pod.sh delete
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (e.g. v4-64, v5p-128), TPU_VERSION (the
# software version, e.g. tpu-ubuntu2204-base), PROJECT (default: gcloud's), REPO_DIR (where the
# checkout goes on the workers).
#
# The workers find each other by themselves (jax reads the pod's metadata: no coordinator flags).
# The workdir must be a gs:// path (or another filesystem every worker sees): checkpoints are
# written by all workers together. The global batch (--config.batch_size) is split over all
# workers; --config.mesh sets the ('data', 'fsdp') device mesh over all chips.
#
# Preemption and restarts: a maintenance event sends SIGTERM; the workers agree on a step, save
# and exit 0. After a preemption (or any stop) run the same `train` command again: every worker
# resumes from the latest complete checkpoint in the workdir. Spot/preemptible slices that are
# deleted must be created again first (`create`, `install`), then `train` with the same workdir.
set -euo pipefail

TPU_NAME=${TPU_NAME:?set TPU_NAME}
ZONE=${ZONE:?set ZONE, e.g. us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
REPO_DIR=${REPO_DIR:-maskclip_jax}
project_args=()
[[ -n "${PROJECT:-}" ]] && project_args=(--project="$PROJECT")

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" \
    ${project_args[@]+"${project_args[@]}"} --worker=all --command="$1"
}

command=${1:?usage: $0 create|install|train ARGS...|stop|delete}
shift
case "$command" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      ${project_args[@]+"${project_args[@]}"} --accelerator-type="$ACCELERATOR" \
      --version="$TPU_VERSION"
    ;;
  install)
    # The same code on every worker: the checkout's HEAD commit (commit local changes first).
    here=$(cd "$(dirname "$0")/.." && pwd)
    archive=$(mktemp --suffix=.tar.gz)
    git -C "$here" archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:maskclip_jax.tar.gz" --zone="$ZONE" \
      ${project_args[@]+"${project_args[@]}"} --worker=all
    rm -f "$archive"
    on_all_workers "rm -rf $REPO_DIR && mkdir -p $REPO_DIR \
      && tar -xzf maskclip_jax.tar.gz -C $REPO_DIR && python3 -m pip install -q -e '$REPO_DIR[tpu]'"
    ;;
  train)
    # Every worker runs the same command; each logs to ~/train.log, worker 0 writes the metrics.
    args=$(printf ' %q' "$@")
    on_all_workers "cd $REPO_DIR && nohup python3 -m maskclip_jax.cli.train $args > ~/train.log 2>&1 &"
    echo "Started on every worker. Follow worker 0 with:"
    echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 \\"
    echo "      --command='tail -f ~/train.log'"
    ;;
  stop)
    # SIGTERM: the workers agree on a step, save a checkpoint there and exit.
    on_all_workers "pkill -TERM -f '^python3 -m maskclip_jax.cli.train' || true"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" \
      ${project_args[@]+"${project_args[@]}"} --quiet
    ;;
  *)
    echo "unknown command $command; use create, install, train, stop or delete" >&2
    exit 2
    ;;
esac
