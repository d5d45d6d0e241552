from setuptools import find_packages, setup

setup(
    name="fastdllm-warmstart",
    version="0.1.0",
    description="Warm-start initialisation, confidence remasking and residual-context hooks for "
                "Fast-dLLM diffusion-LLM decoding",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["fastdllm_warmstart", "fastdllm_warmstart.*"]),
    include_package_data=True,
    package_data={
        "fastdllm_warmstart": [
            "assets/*/*", "presets/*.json", "tasks/*.yaml", "tasks/*/*.yaml", "tasks/*/*.py", "tasks/*/*.jsonl", "tasks/data/*",
        ],
    },
    # Tested ranges, no wider (.ci/run tests both ends): transformers 4.49 (Fast-dLLM v1's pin)
    # to 5.25, lm-eval 0.4.8 (Fast-dLLM's pin) to 0.4.13. Version-dependent calls live in
    # fastdllm_warmstart/compat.py. The `eval` command needs lm-eval 0.4.13's `run` command line;
    # the lm-eval model itself (and the patch's eval_llada_warmstart.py) works on 0.4.8 too.
    install_requires=[
        "torch>=2.1",
        "transformers>=4.49,<5.26",
        "tokenizers>=0.21,<0.24",
        "safetensors>=0.4",
        "numpy",
        "tqdm",
        "packaging",
    ],
    extras_require={
        "eval": ["lm-eval>=0.4.8,<0.4.14", "accelerate>=0.34.2"],
        "plot": ["matplotlib"],
        "test": ["pytest>=7", "lm-eval>=0.4.8,<0.4.14", "accelerate>=0.34.2", "matplotlib"],
    },
    entry_points={"console_scripts": ["fastdllm-warmstart=fastdllm_warmstart.cli:main"]},
)
