"""Python side of the ``tinygsm`` lm-eval task (referenced from ``tinygsm.yaml``).

The YAML names :class:`TinyGSMTask` as the task class (``class: !function utils.TinyGSMTask``), a
task config that lm-eval 0.4.8 and 0.4.13 both build the same way: they import this file by path
and construct the class with the YAML's settings. The class keeps every setting (prompt, target,
metric, filters) and changes one thing only, where the documents come from: the JSONL splits
shipped in the package, read by absolute path through the package's own reader. So the task needs
no network, no Hugging Face cache and no particular working directory. (lm-eval 0.4.13 also has a
``custom_dataset`` setting for this; 0.4.8 rejects it, hence the class.)
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.task import ConfigurableTask

from fastdllm_warmstart.tasks.tinygsm_files import default_split_path, load_jsonl

SPLITS = ("train", "test")


def load_tinygsm(**_metadata: Any):
    """Return the ``train``/``test`` splits as a ``datasets.DatasetDict``.

    Keyword arguments (task metadata, model arguments) are accepted and ignored: none of them
    changes the data.
    """
    import datasets

    splits = {}
    for split in SPLITS:
        path = default_split_path(split)
        if not path.is_file():
            raise FileNotFoundError(
                f"tinygsm split file {path} is missing. Reinstall fastdllm-warmstart, or "
                f"regenerate the splits with "
                f"fastdllm_warmstart.tasks.tinygsm.make_default_splits().")
        rows = [{"question": p["question"], "answer": p["answer"]} for p in load_jsonl(path)]
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)


class TinyGSMTask(ConfigurableTask):
    """lm-eval's YAML-configured task, with the documents read from the shipped splits.

    lm-eval passes the whole YAML (plus any run metadata) as ``config``; the ``class`` entry only
    tells lm-eval which class to build, so it is dropped before the rest becomes the task config.
    """

    def __init__(self, config: dict | None = None) -> None:
        settings = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(config=settings)

    def download(self, dataset_kwargs: dict | None = None, **_kwargs: Any) -> None:
        """Load the shipped splits instead of calling ``datasets.load_dataset``."""
        self.dataset = load_tinygsm()
