from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="fspo-fairseq2",
    version="0.1.0",
    description="Few-shot preference optimization (FSPO) as a fairseq2 recipe plugin",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fspo_recipe", "fspo_recipe.*"]),
    package_data={"fspo_recipe.cards": ["*.yaml"], "fspo_recipe.judge": ["*.txt"]},
    python_requires=">=3.10,<3.13",
    # safetensors, tokenizers, jinja2, huggingface_hub: Hugging Face model directories, tokenizers, chat templates;
    # gguf: llama.cpp files (fspo-gguf-card).
    install_requires=["fairseq2==0.4.6", "pyyaml", "matplotlib", "safetensors>=0.4.3", "tokenizers>=0.21",
                      "jinja2>=3.1", "huggingface_hub>=0.30", "gguf>=0.17"],
    extras_require={
        # fairseq2 0.4.6 pins numpy 1.x: pyarrow 22+ needs numpy 2, and datasets 5 needs pyarrow 24+.
        "data": ["datasets>=3,<5", "pyarrow>=15,<22", "orjson"],
        # the chat judge of fspo-judge (any OpenAI-compatible server: vLLM, SGLang, OpenAI)
        "judge": ["openai>=1.40"],
        # transformers: the reference implementation the model families are tested against (5.23 runs on torch 2.6).
        # accelerate: transformers' own load of GGUF files, the reference of the GGUF import's tests.
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "transformers==5.23.0", "accelerate", "openai>=1.40"],
    },
    entry_points={
        "fairseq2.extension": ["fspo = fspo_recipe:setup_fairseq2_extension"],
        "fairseq2.cli": ["fspo = fspo_recipe:setup_fairseq2_cli"],
        "console_scripts": [
            "fspo-tiny-assets = fspo_recipe.models.tiny:main",
            "fspo-metrics = fspo_recipe.report:main",
            "fspo-prepare = fspo_recipe.data.prepare:main",
            "fspo-score-reference = fspo_recipe.scoring.reference:main",
            "fspo-synthetic-users = fspo_recipe.data.synthetic:main",
            "fspo-hf-card = fspo_recipe.models.hf:main",
            "fspo-gguf-card = fspo_recipe.models.gguf_import:main",
            "fspo-export-hf = fspo_recipe.models.hf_export:main",
            "fspo-generate = fspo_recipe.eval.generate_cli:main",
            "fspo-fetch-smollm2 = fspo_recipe.models.smollm2:main",
            "fspo-judge = fspo_recipe.judge.cli:main",
            "fspo-gpo = fspo_recipe.gpo.cli:main",
        ],
    },
)
