"""The quickstart's inputs, from text shipped in the repository (nothing is downloaded): the
README, the workflow pages in docs/, examples/quickstart/corpus.txt and the docstrings of the
package, cut into paragraphs; every tenth paragraph is held out. Writes train.jsonl,
held_out.jsonl, a byte-level BPE tokenizer trained on the training paragraphs (a transformers
tokenizer directory) and two lm-eval tasks on the held-out paragraphs (tasks/): quickstart_mc
(which of three endings continues a paragraph's opening) and quickstart_ppl (rolling perplexity).

    python examples/quickstart/prepare.py OUT_DIR [--vocab-size 512]

`--text-root DIR` (repeatable) adds the docstrings of the .py files and the .md/.rst/.txt
documents under DIR, in path order, up to `--max-mb` megabytes per root: a larger corpus of real
text from what is installed on the machine (examples/pythia/replication.sh uses its Python's
standard library and site-packages).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

from megatron_mamba.data.toy_tokenizer import train_toy_tokenizer

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["README.md", "docs/*.md", "examples/quickstart/corpus.txt"]


def _docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree, *ast.walk(tree)]
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [doc for node in nodes if isinstance(node, kinds) and (doc := ast.get_docstring(node))]


def installed_texts(root: Path, budget: int) -> list[str]:
    """Docstrings and documents under `root`, in path order, until `budget` characters."""
    texts, size = [], 0
    for path in sorted(root.rglob("*")):
        if size >= budget:
            break
        try:
            if path.suffix == ".py":
                found = _docstrings(path)
            elif path.suffix in (".md", ".rst", ".txt") and path.is_file():
                found = [path.read_text(encoding="utf-8")]
            else:
                continue
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue  # files that are not Python 3 source or not UTF-8 text
        texts += found
        size += sum(map(len, found))
    return texts


def paragraphs(roots: list[Path] = (), budget: int = 0) -> list[str]:
    """Every paragraph of the sources, whitespace collapsed, in a fixed order."""
    texts = [path.read_text(encoding="utf-8") for p in SOURCES for path in sorted(REPO.glob(p))]
    for path in sorted((REPO / "megatron_mamba").rglob("*.py")):
        texts += _docstrings(path)
    for root in roots:
        texts += installed_texts(root, budget)
    out = []
    for text in texts:
        for block in re.split(r"\n\s*\n", text):
            block = " ".join(block.split())
            if len(block) > 20:
                out.append(block)
    return out


TASKS = {
    "quickstart_mc": """\
task: quickstart_mc
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
metadata:
  version: 1.0
""",
    "quickstart_ppl": """\
task: quickstart_ppl
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
metadata:
  version: 1.0
""",
}


def choices(held_out: list[str], words: int = 8) -> list[dict]:
    """Consecutive word windows of the held-out paragraphs: an opening, its own next words and
    two other windows' as the choices, the right one at a position that rotates."""
    windows = [
        (w[i : i + words], w[i + words : i + 2 * words])
        for w in (t.split() for t in held_out)
        for i in range(0, len(w) - 2 * words + 1, 2 * words)
    ]
    rows = []
    for i, (opening, ending) in enumerate(windows):
        endings = [" ".join(windows[(i + k) % len(windows)][1]) for k in (1, 2)]
        answer = i % 3
        endings.insert(answer, " ".join(ending))
        rows.append({"question": " ".join(opening), "choices": endings, "answer": answer})
    return rows


def write_tasks(directory: Path, held_out: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = {
        "quickstart_mc": choices(held_out),
        "quickstart_ppl": [{"text": t} for t in held_out],
    }
    for name, template in TASKS.items():
        data = (directory / f"{name}.jsonl").resolve()
        data.write_text("".join(json.dumps(r) + "\n" for r in rows[name]), encoding="utf-8")
        (directory / f"{name}.yaml").write_text(template.format(data=json.dumps(str(data))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--text-root", type=Path, action="append", default=[])
    parser.add_argument("--max-mb", type=float, default=20.0, help="per --text-root")
    args = parser.parse_args()
    for root in args.text_root:
        if not root.is_dir():
            parser.error(f"--text-root {root} is not a directory")
    args.out.mkdir(parents=True, exist_ok=True)
    texts = paragraphs(args.text_root, int(args.max_mb * 2**20))
    held_out = texts[9::10]
    train = [t for i, t in enumerate(texts) if i % 10 != 9]
    for name, part in (("train", train), ("held_out", held_out)):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in part)
        (args.out / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    train_toy_tokenizer(train, args.out / "tokenizer", args.vocab_size)
    write_tasks(args.out / "tasks", held_out)
    words = sum(len(t.split()) for t in texts)
    print(f"{len(train)} training and {len(held_out)} held-out paragraphs ({words} words)")


if __name__ == "__main__":
    main()
