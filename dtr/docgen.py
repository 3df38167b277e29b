"""Generates the reference parts of ``docs/``: the settings table (from the attribute
docstrings in ``dtr/config.py``) and the OCI error table (from ``api/oci/errors.py``).
``tests/unit/test_docs.py`` fails when the committed docs differ from what this produces;
``python -m dtr.docgen`` rewrites them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import msgspec

from dtr import config
from dtr.api.oci.errors import render_markdown

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"


def _field_docs() -> dict[tuple[str, str], str]:
    """(class name, field name) → attribute docstring, read from config.py's source."""
    tree = ast.parse(Path(config.__file__).read_text())
    docs: dict[tuple[str, str], str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and i + 1 < len(body) and isinstance(body[i + 1], ast.Expr)):
                value = body[i + 1].value  # type: ignore[attr-defined]
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    docs[(node.name, stmt.target.id)] = " ".join(value.value.split())
    return docs


def settings_table() -> str:
    """Markdown table of every leaf setting: YAML path, environment variable, default."""
    docs = _field_docs()
    rows = ["| setting (YAML) | environment variable | default | meaning |",
            "|---|---|---|---|"]

    def walk(cls: type[msgspec.Struct], prefix: list[str]) -> None:
        instance = cls()
        for f in msgspec.structs.fields(cls):
            value = getattr(instance, f.name)
            if isinstance(value, msgspec.Struct):
                walk(type(value), [*prefix, f.name])
                continue
            path = ".".join([*prefix, f.name])
            env = "DTR_" + "_".join([*prefix, f.name]).upper()
            default = f"`{value!r}`" if value not in ("", None) else "(empty)"
            rows.append(f"| `{path}` | `{env}` | {default} | "
                        f"{docs.get((cls.__name__, f.name), '')} |")

    walk(config.Settings, [])
    return "\n".join(rows) + "\n"


def _splice(path: Path, content: str) -> str:
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{content}{END}{tail}"


def expected() -> dict[Path, str]:
    """Each generated doc file and the full text it should have."""
    return {
        ROOT / "docs/configuration.md": _splice(ROOT / "docs/configuration.md",
                                                settings_table()),
        ROOT / "docs/errors.md": _splice(ROOT / "docs/errors.md", render_markdown()),
        ROOT / "docs/openapi.json": openapi_json(),
    }


def openapi_json() -> str:
    """The admin API's OpenAPI document (``docs/openapi.json``), built from the app as
    ``create_app`` wires it (in a throw-away data folder; nothing is started).
    """
    import json  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from dtr.app import create_app  # noqa: PLC0415 - the whole app, only for this document

    with tempfile.TemporaryDirectory() as tmp:
        settings = config.load_settings(env={}, overrides={"server": {"data_dir": tmp},
                                                           "auth": {"enabled": True}})
        document = create_app(settings).openapi_schema.to_schema()
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    """Rewrite the generated docs; print which changed."""
    for path, text in expected().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
