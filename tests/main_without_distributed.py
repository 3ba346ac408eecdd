"""maskclip-train with jax.distributed made to fail if anything starts it.

test_multihost.py runs its single-process reference through this (launch/local.sh with
MODULE=main_without_distributed): a single-process run must never touch jax.distributed.
"""
import jax
from jax._src import distributed as jax_distributed


def _refuse(*args, **kwargs):
  raise AssertionError(f"A single-process run called jax.distributed.initialize{args, kwargs}.")


jax.distributed.initialize = _refuse
jax_distributed.global_state.initialize = _refuse

if __name__ == "__main__":
  from maskclip_jax.cli import train  # pylint: disable=g-import-not-at-top
  train.run()
