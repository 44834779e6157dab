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


def test_only_cli_imports_click():
    for path in PKG.rglob("*.py"):
        if path.name == "cli.py":
            continue
        src = path.read_text()
        assert "import click" not in src and "from click" not in src, path


def test_ops_never_imported_by_catalog_or_store():
    for path in [PKG / "store.py", *sorted((PKG / "catalog").glob("*.py"))]:
        assert not {"ops", "store"} & package_imports(path), path


# backshift/catalog/: each module imports the leaves and the sibling modules named here,
# never store or ops (the text helpers at the bottom, the connection above migrations, the
# jobs above those; __init__ assembles the Catalog from all of them).
CATALOG_RULES = {
    "sqltext": set(),
    "migrate": {"sqltext"},
    "conn": {"migrate"},
    "saves": {"conn", "sqltext"},
    "recording": {"sqltext"},
    "contents": {"sqltext"},
    "members": {"reports", "saves", "sqltext"},
    "mount": {"sqltext"},
    "maintenance": {"conn", "sqltext"},
    "reports": {"sqltext"},
}


def test_catalog_modules_import_only_leaves_and_their_siblings():
    found = {p.stem for p in (PKG / "catalog").glob("*.py")} - {"__init__"}
    assert found == set(CATALOG_RULES), "add the new module to CATALOG_RULES"
    for name, siblings in CATALOG_RULES.items():
        extra = package_imports(PKG / "catalog" / f"{name}.py") - LEAVES - siblings - {name}
        assert not extra, f"catalog/{name}.py imports {extra}; allowed: {LEAVES | siblings}"
    extra = package_imports(PKG / "catalog" / "__init__.py") - set(CATALOG_RULES)
    assert not extra, f"catalog/__init__.py imports {extra}"


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
# through callables cli.py hands it).
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
        if path.name == "cli.py" or path.parent.name == "remote":
            continue
        assert "remote" not in package_imports(path), path
