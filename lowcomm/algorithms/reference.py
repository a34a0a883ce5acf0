"""The options reference, docs/options.md, generated from the algorithms' declarations.

``python -m lowcomm.algorithms.reference`` rewrites it; a test checks that it is current.
"""

from __future__ import annotations

from pathlib import Path

from lowcomm.algorithms import ALGORITHMS

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "options.md"


def options_reference() -> str:
    """The Markdown reference of every algorithm's options (docs/options.md), from their declarations."""
    lines = [
        "# Algorithm options",
        "",
        "Generated from each algorithm class's `OPTIONS` (`python -m lowcomm.algorithms.reference`).",
        "An option is a keyword argument of the class, a `lowcomm train` flag (`--name-with-dashes`), a key",
        "of the config's `algorithm:` section, and `lowcomm bench` passes it to the algorithms that take it.",
        "Library-only options are keyword arguments alone.",
    ]
    for algo, cls in ALGORITHMS.items():
        lines += ["", f"## `{algo}`: `lowcomm.{cls.__name__}`", ""]
        options = cls.options()
        if not options:
            lines.append("No options besides those every strategy takes (`mesh`, `communicator`, `max_grad_norm`).")
            continue
        lines += ["| option | flag | default | meaning |", "| --- | --- | --- | --- |"]
        for option in options.values():
            flag = f"`--{option.name.replace('_', '-')}`" if option.flag else "library only"
            lines.append(f"| `{option.name}` | {flag} | `{option.default}` | {option.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    REFERENCE.write_text(options_reference(), encoding="utf-8")
