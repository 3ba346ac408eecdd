"""maskclip_jax: MaskCLIP pretraining in JAX/Flax, from a laptop CPU to TPU pods."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.7",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.87",
    "ml_collections>=0.1.1",
    "clu>=0.0.12",
    "tensorboard>=2.15",  # clu's metric writers need it and do not declare it
    "tensorflow-cpu>=2.16; platform_machine=='x86_64'",
    "tensorflow>=2.16; platform_machine!='x86_64'",
    "tensorflow-datasets>=4.9",
    "numpy>=1.26",
    "pillow>=10",
    "ftfy>=6.1",
    "regex>=2023.0",
    "tqdm>=4.60",
    "matplotlib>=3.7",  # curves.png at the end of a run and maskclip-plot
]

setup(
    name="maskclip_jax",
    version="0.1.0",
    description="MaskCLIP (masked self-distillation + CLIP) pretraining in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["maskclip_jax", "maskclip_jax.*"]),
    package_data={"maskclip_jax": ["data/assets/*", "evaluation/assets/*"]},
    include_package_data=True,
    install_requires=CORE + ["jax[cpu]"],
    extras_require={
        "tpu": ["jax[tpu]"],
        "cuda12": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],  # current NVIDIA drivers ship CUDA 13
        "test": ["pytest>=8", "pytest-xdist>=3.5", "chex>=0.1.87"],
        # The PyTorch side: export parity tests and open_clip's tokenizer as the reference.
        "torch": [
            "torch==2.14.1",
            "torchvision==0.29.1",
            "open_clip_torch>=3.0",
            "timm>=1.0",
            "transformers>=4.40",
            "safetensors>=0.4",
        ],
    },
    entry_points={"console_scripts": [
        "maskclip-train=maskclip_jax.cli.train:run",
        "maskclip-export=maskclip_jax.cli.export:run",
        "maskclip-eval=maskclip_jax.cli.evaluate:run",
        "maskclip-heatmap=maskclip_jax.cli.heatmap:run",
        "maskclip-plot=maskclip_jax.cli.plot:run",
    ]},
)
