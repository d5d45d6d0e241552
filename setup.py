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
    install_requires=[
        "torch>=2.1",
        "transformers>=4.46",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "numpy",
        "tqdm",
    ],
    extras_require={
        # lm-eval's model API and CLI; 0.4.13 is the current release and the one tested.
        "eval": ["lm-eval>=0.4.8,<0.5", "accelerate>=0.26"],
        "plot": ["matplotlib"],
        "test": ["pytest>=7", "lm-eval>=0.4.8,<0.5", "accelerate>=0.26", "matplotlib"],
    },
    entry_points={"console_scripts": ["fastdllm-warmstart=fastdllm_warmstart.cli:main"]},
)
