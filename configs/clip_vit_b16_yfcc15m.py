"""The CLIP baseline on the paper's recipe: configs/maskclip_vit_b16_yfcc15m.py:clip, the
masked self-distillation branches off (w_dist = w_mlm = 0, so no decoders are built).
Takes the same modifiers (`:runlocal`, `:sigmoid`).

Paper's CLIP results for this recipe: ImageNet zero-shot 37.6, linear probe 66.5, Flickr30k
zero-shot R@1 I2T/T2I 52.9/32.8.
"""
import importlib.util
import os

# Config files are loaded by path, not as a package: load the sibling the same way.
_spec = importlib.util.spec_from_file_location(
    "maskclip_vit_b16_yfcc15m", os.path.join(os.path.dirname(__file__),
                                             "maskclip_vit_b16_yfcc15m.py"))
maskclip_vit_b16_yfcc15m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maskclip_vit_b16_yfcc15m)


def get_config(arg=None):
  return maskclip_vit_b16_yfcc15m.get_config(",".join(["clip"] + ([arg] if arg else [])))
