"""Dataset loader of the ``tinygsm`` lm-eval task (referenced from ``tinygsm.yaml``).

lm-eval imports this file by path (``!function utils.load_tinygsm``), not as part of the package,
so it locates the shipped JSONL splits relative to its own location and needs no network, no Hugging
Face cache and no particular working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPLIT_FILES = {"train": "tinygsm_train.jsonl", "test": "tinygsm_test.jsonl"}


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"tinygsm split file {path} is missing. Reinstall fastdllm-warmstart, or regenerate the "
            f"splits with fastdllm_warmstart.tasks.tinygsm.make_default_splits().")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                rows.append({"question": row["question"], "answer": row["answer"]})
    return rows


def load_tinygsm(**_metadata: Any):
    """Return the ``train``/``test`` splits as a ``datasets.DatasetDict``.

    lm-eval calls ``custom_dataset`` with the task metadata and the model arguments as keyword
    arguments; none of them changes the data, so they are ignored.
    """
    import datasets

    return datasets.DatasetDict({
        split: datasets.Dataset.from_list(_read_jsonl(DATA_DIR / name))
        for split, name in SPLIT_FILES.items()
    })
