"""Regenerate ``fastdllm-warmstart.patch`` from the files under ``patches/src/``.

The patch only *adds* files to a Fast-dLLM checkout (diffs against /dev/null): it carries no
upstream line, not even as context, and applies to any upstream revision that has ``llada/`` (and ``dream/`` for the Dream entry point).

    python patches/make_patch.py          # rewrite the patch
    python patches/make_patch.py --check  # exit 1 if the patch is out of date
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
PATCH = HERE / "fastdllm-warmstart.patch"


def render() -> str:
    chunks = []
    for path in sorted(p for p in SRC.rglob("*") if p.is_file() and p.suffix == ".py"):
        rel = path.relative_to(SRC).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        chunks.append(f"diff --git a/{rel} b/{rel}\n"
                      "new file mode 100644\n"
                      "--- /dev/null\n"
                      f"+++ b/{rel}\n"
                      f"@@ -0,0 +1,{len(lines)} @@\n"
                      + "".join(f"+{line}\n" for line in lines))
    return "".join(chunks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the patch is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PATCH.read_text(encoding="utf-8") if PATCH.exists() else ""
        if current != text:
            print(f"{PATCH.name} is out of date; run python patches/make_patch.py", file=sys.stderr)
            return 1
        return 0
    PATCH.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
