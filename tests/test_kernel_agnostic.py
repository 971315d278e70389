"""workbench/ knows no kernel: no attention or MoE words in its code (docstrings and comments
may cite an example), and a second kernel's bench cases, peers and table columns come from
its own folder without any change to workbench/."""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORDS = {
    # attention
    "causal", "heads", "seqlen", "seqlens", "attention", "softmax", "fmha",
    # MoE
    "moe", "expert", "experts", "swiglu", "topk", "gate", "gates",
}
LETTERS = {"q", "k", "v"}  # as a whole identifier or string: an attention input's name


def _docstring_starts(tree: ast.AST) -> set[tuple[int, int]]:
    starts = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                starts.add((first.lineno, first.col_offset))
    return starts


def _words(text: str) -> list[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)  # camelCase
    return [w for w in re.split(r"[^A-Za-z0-9]+|_", text.lower()) if w]


def code_words(source: str) -> list[tuple[int, str]]:
    """(line, offending token) for every attention or MoE word outside docstrings and comments."""
    docs = _docstring_starts(ast.parse(source))
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.start in docs):
            continue
        if tok.type == tokenize.NAME:
            if tok.string in ("q", "Q") or WORDS & set(_words(tok.string)):
                found.append((tok.start[0], tok.string))
        elif tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):  # an f-string: its text as written
                value = tok.string
            if (isinstance(value, str) and value.lower() in LETTERS) or WORDS & set(_words(str(value))):
                found.append((tok.start[0], tok.string))
    return found


def test_the_scan_sees_code_and_skips_docstrings_and_comments():
    """The scanner itself: a word in code is found, the same word in a docstring or comment is not."""
    source = textwrap.dedent('''
        """Module doc: causal attention, e.g. fmha's."""
        def f(x):
            """Doc: heads."""
            y = x["v"]  # comment: softmax
            return f"{y} causal"
        NUM_HEADS = 2
    ''')
    assert [word for _, word in code_words(source)] == ['"v"', 'f"{y} causal"', "NUM_HEADS"]


@pytest.mark.parametrize("path", sorted((ROOT / "workbench").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_workbench_code_has_no_kernel_words(path):
    found = code_words(path.read_text())
    assert not found, f"{path.relative_to(ROOT)}: " + ", ".join(f"line {line}: {word}" for line, word in found)
