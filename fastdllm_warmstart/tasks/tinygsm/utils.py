"""Dataset loader of the ``tinygsm`` lm-eval task (referenced from ``tinygsm.yaml``).

lm-eval imports this file by path (``!function utils.load_tinygsm``); it reads the JSONL splits
shipped in the package through the package's own reader, so it needs no network, no Hugging Face
cache and no particular working directory.
"""

from __future__ import annotations

from typing import Any

from fastdllm_warmstart.tasks.tinygsm_files import default_split_path, load_jsonl

SPLITS = ("train", "test")


def load_tinygsm(**_metadata: Any):
    """Return the ``train``/``test`` splits as a ``datasets.DatasetDict``.

    lm-eval calls ``custom_dataset`` with the task metadata and the model arguments as keyword
    arguments; none of them changes the data, so they are ignored.
    """
    import datasets

    splits = {}
    for split in SPLITS:
        path = default_split_path(split)
        if not path.is_file():
            raise FileNotFoundError(
                f"tinygsm split file {path} is missing. Reinstall fastdllm-warmstart, or regenerate "
                f"the splits with fastdllm_warmstart.tasks.tinygsm.make_default_splits().")
        rows = [{"question": p["question"], "answer": p["answer"]} for p in load_jsonl(path)]
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
