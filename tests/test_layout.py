"""The package tree follows the pipeline: a lower stage never imports a higher one.

Read from the source with `ast`, imports inside functions included, so a late import cannot
sneak a cycle past the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sendguard"

# Lowest first. Modules at the top of the package are the shared words, except `parts` (the
# composition root: it builds every stage, and the HTTP routes are handed what it built), `service`
# (the loops that run what it built), the commands that run the whole (`mcp_stdio` serves the http
# stage's MCP tools over stdio, through the API client), and the API client, which talks to the
# http stage from outside as the commands do.
LAYERS = ["words", "state", "governance", "feedback", "intake", "delivery", "parts", "http", "commands"]
COMPOSITION = {"parts", "service"}
COMMANDS = {"daemon", "demo", "cli", "client", "mcp_stdio", "__main__"}


def layer_of(module: str) -> int:
    """`sendguard.state.store` -> the index of `state` in LAYERS."""
    parts = module.split(".")
    if len(parts) == 2:
        if parts[1] in COMPOSITION:
            return LAYERS.index("parts")
        return LAYERS.index("commands" if parts[1] in COMMANDS else "words")
    return LAYERS.index(parts[1])


def sendguard_modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The sendguard modules a file imports (`from sendguard.x import y` counts x.y if it is a module)."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in imported if name in modules and name != "sendguard"}


def test_every_module_belongs_to_a_known_layer() -> None:
    for module in sendguard_modules():
        if module != "sendguard":
            layer_of(module)  # raises ValueError for a package that is not in LAYERS


def test_no_stage_imports_a_higher_one() -> None:
    modules = sendguard_modules()
    upward = []
    for module, path in modules.items():
        if module == "sendguard":
            continue
        for imported in imports_of(path, set(modules)):
            if layer_of(imported) > layer_of(module):
                upward.append(
                    f"{module} ({LAYERS[layer_of(module)]}) imports {imported} ({LAYERS[layer_of(imported)]})"
                )
    assert upward == [], "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule itself can fail: an import of the delivery stage from the state stage is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from sendguard.delivery import relay\n")
    modules = set(sendguard_modules())
    found = imports_of(bad, modules)
    assert "sendguard.delivery.relay" in found
    assert layer_of("sendguard.delivery.relay") > layer_of("sendguard.state.store")


def test_the_api_client_knows_the_daemon_only_by_its_wire_form() -> None:
    """The client runs where no daemon's parts are (an operator's shell, later an MCP server):
    it may use the shared words, never a stage, the composition root or the routes' own models."""
    modules = sendguard_modules()
    imported = imports_of(modules["sendguard.client"], set(modules))
    assert imported and {layer_of(name) for name in imported} == {LAYERS.index("words")}, imported
