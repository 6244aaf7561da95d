"""The JSON examples of the spec documents, extracted and committed as test vectors.

``extract(text)`` finds every balanced ``{...}`` block of a spec file that parses as a JSON
object with a ``type``. The committed copies in tests/vectors/ are what the tests use (a
clone of this repository has no spec folder); when ../shared/spec is beside the checkout, a
test checks that the committed copies still match the documents.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent / "vectors"
SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"
SPEC_FILES = {
    "000": "000_afa4b7757ce070c1.txt",
    "001": "001_906cd17a0c98693c.txt",
    "002": "002_280eb72d5276f7eb.txt",
    "003": "003_e4e8378b6ec0869e.txt",
    "004": "004_3e103e15799b92ab.txt",
}


def extract(text: str) -> list[dict[str, Any]]:
    """Every top-level JSON object with a string ``type`` in ``text``, in order."""
    out: list[dict[str, Any]] = []
    depth, start = 0, -1
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                try:
                    obj = json.loads(text[start : i + 1])
                except ValueError:
                    continue
                if isinstance(obj, dict) and isinstance(obj.get("type"), str) \
                        and obj not in out:  # spec 002 repeats its examples
                    out.append(obj)
    return out


def load(spec: str) -> list[dict[str, Any]]:
    """The committed vectors of spec file ``spec`` ("000" ... "004")."""
    path = VECTORS / f"spec_{spec}.json"
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return data


if __name__ == "__main__":  # regenerate: python tests/spec_vectors.py
    for key, name in SPEC_FILES.items():
        vectors = extract((SPEC_DIR / name).read_text())
        (VECTORS / f"spec_{key}.json").write_text(json.dumps(vectors, indent=1) + "\n")
        print(key, len(vectors), [v["type"] for v in vectors])
