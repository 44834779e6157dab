"""The import arrows of STYLE.md, checked with ast so they stay true."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).parent.parent / "backshift"

# module -> package modules it may import (besides itself)
LEAVES = {"model", "pathcodec", "errors", "crashpoints", "diskio", "chunkcodec"}
RULES = {
    "chunker": {"model"},
    "walk": {"model", "pathcodec"},
    "retention": {"model"},
    "legacy": {"model", "pathcodec", "chunkcodec"},
    "chunkcodec": set(),
    "xattrs": set(),
    "catalog": LEAVES,
    "store": LEAVES,
    "objstore": {"model", "errors", "chunkcodec", "s3client"},
    "s3client": {"errors"},
}


def package_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("backshift"):
            parts = node.module.split(".")
            found.add(parts[1] if len(parts) > 1 else parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("backshift."):
                    found.add(alias.name.split(".")[1])
    return found


def test_leaf_modules_import_only_what_style_allows():
    for name, allowed in RULES.items():
        path = PKG / f"{name}.py"
        if not path.exists():
            continue
        extra = package_imports(path) - allowed - {name}
        assert not extra, f"{name}.py imports {extra}; allowed: {allowed}"


def in_cli(path: Path) -> bool:
    return path.parent == PKG / "cli"


def test_only_cli_imports_click():
    for path in PKG.rglob("*.py"):
        if in_cli(path):
            continue
        src = path.read_text()
        assert "import click" not in src and "from click" not in src, path


def test_ops_never_imported_by_catalog_or_store():
    for name in ("catalog", "store"):
        assert "ops" not in package_imports(PKG / f"{name}.py")


def test_stdlib_sqlite3_never_imported():
    """One SQLite library per process (apsw's): a second copy can corrupt the catalog."""
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "sqlite3" for n in names), path


def test_only_the_mount_modules_import_fuse():
    """pyfuse3 and trio are the optional extra `backshift[mount]`: only ops/fusefs.py may
    import them at the top, ops/mount.py only inside functions (after checking for them),
    so every other command runs without them."""
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = set()
        anywhere = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            anywhere |= names
            if node in tree.body:
                top |= names
        fuse = {"pyfuse3", "trio"}
        rel = path.relative_to(PKG).as_posix()
        if rel == "ops/fusefs.py":
            assert fuse <= top, rel
        elif rel == "ops/mount.py":
            assert not top & fuse and fuse <= anywhere, rel
        else:
            assert not anywhere & fuse, rel


# backshift/remote/: URL and framing at the bottom, transports and the server above them, the
# client on top; none imports the CLI, the operations or the stores (the server runs commands
# through callables cli/serve.py hands it).
REMOTE_RULES = {
    "url": {"errors"},
    "protocol": {"errors"},
    "transport": {"errors", "url"},
    "server": {"errors", "pathcodec", "protocol", "__version__"},
    "client": {"errors", "pathcodec", "protocol", "transport", "url", "server",
               "__version__"},
}


def test_remote_modules_import_only_what_their_layer_allows():
    found = {p.stem for p in (PKG / "remote").glob("*.py")} - {"__init__"}
    assert found == set(REMOTE_RULES), "add the new module to REMOTE_RULES"
    for name, allowed in REMOTE_RULES.items():
        extra = package_imports(PKG / "remote" / f"{name}.py") - allowed - {name}
        assert not extra, f"remote/{name}.py imports {extra}; allowed: {allowed}"


def test_only_cli_imports_remote():
    for path in PKG.rglob("*.py"):
        if in_cli(path) or path.parent.name == "remote":
            continue
        assert "remote" not in package_imports(path), path


def test_nothing_below_the_cli_imports_it():
    """The operations, stores and catalog never reach up into the command line (only
    `python -m backshift` starts it)."""
    for path in PKG.rglob("*.py"):
        if in_cli(path) or path == PKG / "__main__.py":
            continue
        assert "cli" not in package_imports(path), path


# backshift/cli/: views and forward at the bottom, app (the group, `run`) on them, options
# on app, the command modules on those, and __init__ assembling the group from them all.
CLI_RULES = {
    "views": set(),
    "forward": set(),
    "app": {"forward", "views"},
    "options": {"app"},
    "admin": {"app", "options", "views"},
    "save": {"admin", "app", "options", "views"},
    "reports": {"app", "options", "views"},
    "restore": {"app", "options", "views"},
    "serve": {"app"},
    "__init__": {"admin", "app", "options", "reports", "restore", "save", "serve"},
}


def cli_sibling_imports(path: Path) -> set[str]:
    """The modules of backshift/cli/ that PATH imports (`from .x import ...`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_cli_modules_import_only_what_their_layer_allows():
    found = {p.stem for p in (PKG / "cli").glob("*.py")}
    assert found == set(CLI_RULES), "add the new module to CLI_RULES"
    for name, allowed in CLI_RULES.items():
        extra = cli_sibling_imports(PKG / "cli" / f"{name}.py") - allowed - {name}
        assert not extra, f"cli/{name}.py imports {extra}; allowed: {allowed}"


def test_cli_keeps_no_module_state():
    """What one invocation changes (the progress line, the repository given) lives in its
    Context, so `serve` can run commands one after another in one process."""
    for path in (PKG / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.Global) for n in ast.walk(tree)), path
