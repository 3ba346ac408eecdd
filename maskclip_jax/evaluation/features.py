"""Embeddings of whole eval sets, correct on any mesh and process count.

Every process reads its own share of the data in padded batches with a `mask` of real rows;
the batches form one global batch sharded over the mesh; the encoder runs on all devices; the
outputs and masks are gathered to every host and the padding rows dropped. Processes stop
together: after the step where no process had a real row left (the gathered mask tells all of
them at once). So no example is dropped or counted twice, whatever divides what.
"""
import dataclasses
from typing import Callable, Iterable, Mapping, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from maskclip_jax import sharding
from maskclip_jax.data import device_put
from maskclip_jax.models.image_towers import select_image_tower
from maskclip_jax.models.maskclip import MaskCLIP, image_tower


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-host) array as NumPy, on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _global_from_replicated(array: np.ndarray, spec: jax.sharding.NamedSharding) -> jax.Array:
  """A global array from a NumPy array every process holds in full."""
  return jax.make_array_from_callback(array.shape, spec, lambda index: array[index])


class EvaluationInterrupted(Exception):
  """An evaluation stopped between two batches because `should_stop` said so (a signal)."""


@dataclasses.dataclass
class Encoders:
  """Jitted image and text encoders of one model on one mesh.

  `params` are the online parameters (any sharding); `teacher` the EMA teacher's (or {}).
  `should_stop`, asked before every batch, interrupts the evaluation (EvaluationInterrupted):
  the trainer passes its preemption handler's, so a SIGTERM does not wait for a long eval.
  """
  model: MaskCLIP
  mesh: jax.sharding.Mesh
  params: Mapping
  teacher: Mapping
  should_stop: Optional[Callable[[], bool]] = None

  def check_stop(self):
    if self.should_stop is not None and self.should_stop():
      raise EvaluationInterrupted("interrupted by a stop request")

  def __post_init__(self):
    tower = image_tower(self.model)

    def encode_image(visual_params, images):
      embedding, tokens = tower.apply({"params": visual_params}, images)
      return {"embedding": embedding, "class_token": tokens[:, 0]}

    def encode_text(params, text):
      return self.model.apply({"params": params}, text, method=MaskCLIP.encode_text)[0]

    self._batch = sharding.batch_sharding(self.mesh)
    self._encode_image = jax.jit(encode_image, out_shardings=self._batch)
    self._encode_text = jax.jit(encode_text, out_shardings=self._batch)

  def visual_params(self, image_tower_name: str) -> Mapping:
    return select_image_tower(self.params, self.teacher, image_tower_name)

  def image_features(self, batches: Iterable[Mapping[str, np.ndarray]], *,
                     image_tower_name: str = "online",
                     keep: tuple[str, ...] = ("label",)) -> dict[str, np.ndarray]:
    """{'embedding', 'class_token', and the `keep` fields} over the real rows of `batches`.

    `batches` are this process's padded local batches (with 'image' and 'mask'); it must
    yield padding batches after its data (an eval iterator with pad_forever=True).
    """
    visual = self.visual_params(image_tower_name)
    chunks = []
    for local in batches:
      self.check_stop()
      fields = {"image": local["image"], "mask": local["mask"]}
      fields.update({k: local[k] for k in keep})
      batch = device_put.make_global_batch(fields, self._batch)
      mask = to_host(batch["mask"]).astype(bool)
      if not mask.any():
        break  # Every process saw this: all of them stop after the same step.
      out = self._encode_image(visual, batch["image"])
      host = {k: to_host(v)[mask] for k, v in out.items()}
      host.update({k: to_host(batch[k])[mask] for k in keep})
      chunks.append(host)
    if not chunks:
      raise ValueError("The eval data has no examples.")
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

  def text_embeddings(self, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """Embeddings of `tokens` (N, L), which every process holds in full, in their order."""
    n = len(tokens)
    devices = self.mesh.size
    batch_size = max(devices, batch_size // devices * devices)
    out = []
    for start in range(0, n, batch_size):
      self.check_stop()
      chunk = tokens[start:start + batch_size]
      real = len(chunk)
      if real < batch_size:  # The last chunk is padded to the jitted shape, then cut.
        pad = np.zeros((batch_size - real,) + chunk.shape[1:], chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      text = _global_from_replicated(chunk, self._batch)
      out.append(to_host(self._encode_text(self.params, text))[:real])
    return np.concatenate(out)
