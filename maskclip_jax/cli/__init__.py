"""The command-line programs, one module each: flags in, the library's work out.

  train.py     maskclip-train     train.py's train_and_evaluate
  evaluate.py  maskclip-eval      a run's evaluators on one of its checkpoints
  heatmap.py   maskclip-heatmap   heatmap/'s write_heatmap
  export.py    maskclip-export    export/'s export_workdir
  plot.py      maskclip-plot      plot.py's write_curves

Each runs as `python -m maskclip_jax.cli.NAME` too. Nothing is imported here: each program's
--help comes before jax (or tensorflow) starts.
"""
