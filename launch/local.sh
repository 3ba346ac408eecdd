#!/usr/bin/env bash
# N training processes on this machine, each with its own fake CPU devices: the multi-host
# code path (jax.distributed, gloo collectives, per-process data, multi-process checkpoints)
# anywhere, e.g. on a laptop or in CI.
#
#   launch/local.sh N [--] MASKCLIP_TRAIN_ARGS...
#   launch/local.sh 2 -- --config configs/tiny_synthetic.py --workdir /tmp/tiny2
#
# Environment:
#   DEVICES_PER_PROCESS  fake CPU devices in each process (default 2)
#   PYTHON               the interpreter (default python3)
#   MODULE               the program to run (default maskclip_jax.cli.train, i.e. maskclip-train)
# Each process gets --coordinator_address (a free port here), --num_processes and --process_id.
# Output of process i > 0 is prefixed with [i]. Waits for all; if one fails the others are
# killed (they would wait for it in their next collective) and the script exits with the
# failing process's status. SIGTERM/SIGINT to this script is passed on to every process, which
# then saves a checkpoint at a step they agree on and exits 0.
set -uo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: $0 NUM_PROCESSES [--] ARGS..." >&2
  exit 2
fi
num_processes=$1
shift
[[ "${1:-}" == "--" ]] && shift

python=${PYTHON:-python3}
module=${MODULE:-maskclip_jax.cli.train}
devices=${DEVICES_PER_PROCESS:-2}
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')

# Fake devices replace any device count already in XLA_FLAGS; JAX on CPU even where a GPU is.
xla_flags=$(echo "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')
export XLA_FLAGS="$xla_flags --xla_force_host_platform_device_count=$devices"
export JAX_PLATFORMS=cpu
export PYTHONUNBUFFERED=1

pids=()
for ((i = 0; i < num_processes; i++)); do
  process_args=()
  if ((num_processes > 1)); then
    process_args=(--coordinator_address="127.0.0.1:$port" --num_processes="$num_processes"
                  --process_id="$i")
  fi
  if ((i == 0)); then
    "$python" -m "$module" "$@" ${process_args[@]+"${process_args[@]}"} &
  else
    "$python" -m "$module" "$@" ${process_args[@]+"${process_args[@]}"} \
      > >(sed -u "s/^/[$i] /") 2>&1 &
  fi
  pids[i]=$!
done

forward() {
  for pid in ${pids[@]+"${pids[@]}"}; do kill -TERM "$pid" 2>/dev/null; done
}
trap forward TERM INT

# Polls instead of `wait -n`, which bash before 5.1 (macOS's 3.2) cannot aim at given jobs.
status=0
while ((${#pids[@]} > 0)); do
  for i in "${!pids[@]}"; do
    pid=${pids[i]}
    kill -0 "$pid" 2>/dev/null && continue  # still running
    wait "$pid"
    code=$?
    unset "pids[i]"
    if ((code != 0 && status == 0)); then
      status=$code
      echo "local.sh: process $i exited with status $code; stopping the others." >&2
      for other in ${pids[@]+"${pids[@]}"}; do kill -KILL "$other" 2>/dev/null; done
    fi
  done
  sleep 0.2
done
exit "$status"
