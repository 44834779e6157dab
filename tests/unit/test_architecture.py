"""The import arrows of the layers (README: Architecture), checked with ast so they stay true.

Every module of backshift (subpackages included) is placed in a layer and may import only
its own layer and those below; the import graph has no cycle; a few modules have tighter
rules. A new or renamed module fails the layer check until it is placed.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

PKG = Path(__file__).parents[2] / "backshift"
ROOT = "backshift"  # the package's own __init__ (its __version__)

# -- the import graph ------------------------------------------------------------------------


def module_name(pkg: Path, path: Path) -> str:
    """'store', 'ops.save', 'remote' (a subpackage's __init__), ROOT for pkg/__init__.py."""
    parts = list(path.relative_to(pkg).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or ROOT


def python_files(pkg: Path) -> list[Path]:
    """Every .py file of the package, through symlinked folders too (migrations/ is one)."""
    return [Path(folder, name) for folder, _dirs, names in os.walk(pkg, followlinks=True)
            for name in names if name.endswith(".py")]


def import_graph(pkg: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its text (function-level and
    TYPE_CHECKING imports too): `from . import x`, `from .. import x`, `from .x import y`,
    `from . import x as y`, `import pkg.x`, `from pkg.x import y`. `from P import NAME` is
    an arrow to module P.NAME when that is a module, else to P itself."""
    files = {module_name(pkg, p): p for p in python_files(pkg)}
    top = pkg.name
    graph: dict[str, set[str]] = {}

    def resolve(parts: list[str]) -> str:
        return ".".join(parts) or ROOT

    for name, path in files.items():
        here = [] if name == ROOT else name.split(".")
        package = here if path.name == "__init__.py" else here[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module.split(".") if node.module else []
                if node.level:
                    if node.level - 1 > len(package):
                        raise AssertionError(f"{path}: import beyond the package")
                    target = package[:len(package) - (node.level - 1)] + module
                elif module and module[0] == top:
                    target = module[1:]
                else:
                    continue  # another library
                for alias in node.names:
                    sub = resolve(target + [alias.name])
                    found.add(sub if sub in files else resolve(target))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == top:
                        found.add(resolve(parts[1:]))
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (two or more modules, or one that
    imports itself), each sorted; Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        found.append(sorted(component))
    return found


def layer_problems(graph: dict[str, set[str]], layers: list[tuple[str, set[str]]]
                   ) -> list[str]:
    """Modules in no layer or in two, and arrows to a higher layer."""
    level: dict[str, int] = {}
    problems = []
    for i, (_title, members) in enumerate(layers):
        for m in members:
            if m in level:
                problems.append(f"{m} is in two layers")
            level[m] = i
    for m in sorted(graph):
        if m not in level:
            problems.append(f"{m} is in no layer: add it to LAYERS")
    for m in sorted(set(level) - set(graph)):
        problems.append(f"{m} is in LAYERS but is no module (renamed? removed?)")
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            if m in level and t in level and level[t] > level[m]:
                problems.append(f"{m} ({layers[level[m]][0]}) imports {t} "
                                f"({layers[level[t]][0]}), a higher layer")
    return problems


# -- the rules ---------------------------------------------------------------------------------

# Bottom first. A module may import its own layer and the layers below it (and no cycle).
LAYERS: list[tuple[str, set[str]]] = [
    ("leaves: import nothing of backshift",
     {ROOT, "model", "errors", "pathcodec", "crashpoints", "diskio", "chunkcodec", "xattrs",
      "sqlguard", "migrations", "ops", "ops.tarstream", "ops.owners", "remote"}),
    ("pure units",
     {"chunker", "walk", "longpath", "retention", "legacy", "lock", "render", "chunkstore",
      "ops.tarsparse", "s3client", "objrequests", "objcodec", "objcopies"}),
    ("the durable batch", {"chunkbatch"}),
    ("the stores",
     {"catalog", "catalog.sqltext", "catalog.migrate", "catalog.conn", "catalog.saves",
      "catalog.recording", "catalog.borrowing", "catalog.contents", "catalog.members",
      "catalog.mount",
      "catalog.maintenance", "catalog.reports", "store", "objstore"}),
    ("the repository", {"repo"}),
    ("operations",
     {"ops.common", "ops.catalog_copy", "ops.select", "ops.query", "ops.reader",
      "ops.readers", "ops.feed", "ops.stopping", "ops.interning", "ops.intake", "ops.borrow",
      "ops.session", "ops.series",
      "ops.report", "ops.check", "ops.expire", "ops.import_legacy", "ops.listing",
      "ops.listformat", "ops.listfast", "ops.where", "ops.digestcheck",
      "ops.tardata", "ops.legacydir",
      "ops.tarproduce", "ops.save", "ops.savewire", "ops.saveserver", "ops.saveproxy",
      "ops.saverun",
      "ops.dryrun", "ops.mounttree", "ops.mountread",
      "ops.readahead"}),
    ("the FUSE mount", {"ops.fusefs", "ops.mount"}),
    ("remote repositories",
     {"remote.url", "remote.protocol", "remote.transport", "remote.server",
      "remote.client"}),
    ("the command line",
     {"cli", "cli.views", "cli.forward", "cli.app", "cli.options", "cli.admin", "cli.save",
      "cli.reports", "cli.restore", "cli.serve", "cli.progress", "__main__"}),
]

# module -> package modules it may import (besides itself): tighter than its layer
LEAVES = {"model", "pathcodec", "errors", "crashpoints", "diskio", "chunkcodec"}
RULES = {
    "chunker": {"model"},
    "walk": {"model", "pathcodec", "longpath"},
    "longpath": {"xattrs"},
    "retention": {"model"},
    "legacy": {"model", "pathcodec", "chunkcodec"},
    "chunkcodec": set(),
    "xattrs": set(),
    "chunkstore": {"model"},
    "chunkbatch": {"diskio", "crashpoints", "errors"},
    "store": LEAVES | {"chunkbatch"},
    "objstore": {"model", "errors", "chunkcodec", "s3client", "objrequests", "objcodec",
                 "objcopies"},
    "objrequests": {"errors", "s3client"},
    "objcodec": {"model", "errors", "chunkcodec"},
    "objcopies": {"errors", "s3client"},
    "s3client": {"errors"},
    "ops.tarstream": set(),
}

# backshift/remote/: URL and framing at the bottom, transports and the server above them, the
# client on top; none imports the CLI, the operations or the stores (the server runs commands
# through callables cli.py hands it).
REMOTE_RULES = {
    "url": {"errors"},
    "protocol": {"errors"},
    "transport": {"errors", "remote.url"},
    "server": {"errors", "pathcodec", "remote.protocol", ROOT},
    "client": {"errors", "pathcodec", "remote.protocol", "remote.transport", "remote.url",
               "remote.server", ROOT},
}


def test_architecture_cycle_finder_finds_cycles_in_a_made_up_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"},
             "f": {"g"}, "g": {"d"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_architecture_graph_sees_every_import_form(tmp_path):
    """A made-up package whose modules import each other in each form the graph must see:
    the cycle finder and the layer check both fail on it."""
    pkg = tmp_path / "backshift"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '1'\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b as bee\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("from .. import a, __version__\nfrom . import d\n")
    (pkg / "sub" / "d.py").write_text("import backshift.e\nfrom backshift.sub.c import x\n")
    (pkg / "e.py").write_text("from .a import thing\n")
    graph = import_graph(pkg)
    assert graph == {ROOT: set(), "sub": set(), "a": {"b"}, "b": {"sub.c"},
                     "sub.c": {"a", ROOT, "sub.d"}, "sub.d": {"e", "sub.c"}, "e": {"a"}}
    assert cycles(graph) == [["a", "b", "e", "sub.c", "sub.d"]]
    layers = [("low", {ROOT, "sub", "a"}), ("high", {"b", "sub.c", "gone"})]
    assert layer_problems(graph, layers) == [
        "e is in no layer: add it to LAYERS",
        "sub.d is in no layer: add it to LAYERS",
        "gone is in LAYERS but is no module (renamed? removed?)",
        "a (low) imports b (high), a higher layer",
    ]


def test_architecture_has_no_import_cycle():
    found = cycles(import_graph(PKG))
    assert not found, f"import cycles among backshift modules: {found}"


def test_architecture_every_module_is_in_a_layer_and_imports_downwards():
    problems = layer_problems(import_graph(PKG), LAYERS)
    assert not problems, "\n".join(problems)


def test_leaf_modules_import_only_what_style_allows():
    graph = import_graph(PKG)
    for name, allowed in RULES.items():
        assert name in graph, f"RULES names {name}, which is no module"
        extra = graph[name] - allowed - {name}
        assert not extra, f"{name} imports {extra}; allowed: {allowed}"


def in_cli(path: Path) -> bool:
    return path.parent == PKG / "cli"


def test_only_cli_imports_click():
    for path in PKG.rglob("*.py"):
        if in_cli(path):
            continue
        src = path.read_text()
        assert "import click" not in src and "from click" not in src, path


def test_ops_never_imported_by_catalog_or_store():
    graph = import_graph(PKG)
    catalog = [m for m in graph if m == "catalog" or m.startswith("catalog.")]
    for name in ("store", "chunkbatch", "chunkstore", "chunkcodec", *catalog):
        assert not {m for m in graph[name] if m.split(".")[0] == "ops"}, name
    for name in catalog:
        assert "store" not in graph[name], name


# backshift/catalog/: each module imports the leaves and the sibling modules named here,
# never store or ops (the text helpers at the bottom, the connection above migrations, the
# jobs above those; __init__ assembles the Catalog from all of them).
CATALOG_RULES = {
    "sqltext": set(),
    "migrate": {"sqltext"},
    "conn": {"migrate"},
    "saves": {"conn", "sqltext"},
    "recording": {"sqltext"},
    "borrowing": {"sqltext"},
    "contents": {"sqltext"},
    "members": {"reports", "saves", "sqltext"},
    "mount": {"sqltext"},
    "maintenance": {"conn", "sqltext"},
    "reports": {"sqltext"},
}


def test_catalog_modules_import_only_leaves_and_their_siblings():
    found = {p.stem for p in (PKG / "catalog").glob("*.py")} - {"__init__"}
    assert found == set(CATALOG_RULES), "add the new module to CATALOG_RULES"
    graph = import_graph(PKG)
    leaves = LEAVES | {"migrations"}
    for name, siblings in CATALOG_RULES.items():
        allowed = leaves | {f"catalog.{s}" for s in siblings}
        extra = graph[f"catalog.{name}"] - allowed
        assert not extra, f"catalog/{name}.py imports {extra}; allowed: {allowed}"
    extra = graph["catalog"] - leaves - {f"catalog.{n}" for n in CATALOG_RULES}
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


def test_remote_modules_import_only_what_their_layer_allows():
    found = {p.stem for p in (PKG / "remote").glob("*.py")} - {"__init__"}
    assert found == set(REMOTE_RULES), "add the new module to REMOTE_RULES"
    graph = import_graph(PKG)
    for name, allowed in REMOTE_RULES.items():
        extra = graph[f"remote.{name}"] - allowed
        assert not extra, f"remote/{name}.py imports {extra}; allowed: {allowed}"


def test_only_cli_imports_remote():
    for name, targets in import_graph(PKG).items():
        if name == "cli" or name.startswith("cli.") or name.split(".")[0] == "remote":
            continue
        assert not {t for t in targets if t.split(".")[0] == "remote"}, name


def test_nothing_below_the_cli_imports_it():
    """The operations, stores and catalog never reach up into the command line (only
    `python -m backshift` starts it)."""
    for name, targets in import_graph(PKG).items():
        if name in ("cli", "__main__") or name.startswith("cli."):
            continue
        assert not {t for t in targets if t.split(".")[0] == "cli"}, name


# backshift/cli/: views and forward at the bottom (progress, the live line's writer, under
# views), app (the group, `run`) on them, options on app, the command modules on those,
# and __init__ assembling the group from them all.
CLI_RULES = {
    "progress": set(),
    "views": {"progress"},
    "forward": set(),
    "app": {"forward", "views"},
    "options": {"app"},
    "admin": {"app", "options", "views"},
    "save": {"admin", "app", "options", "views"},
    "reports": {"app", "options", "views"},
    "restore": {"app", "options", "views"},
    "serve": {"app", "admin"},
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


# -- the chunk store interface ---------------------------------------------------------------

# used in ops/save.py on the concrete detached Store of a reader process only (_reader_store)
_READER_STORE_ONLY = {"pid"}


def _protocol_members() -> set[str]:
    tree = ast.parse((PKG / "chunkstore.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ChunkStore")
    members = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            members.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            members.add(node.target.id)
    return members


def test_chunk_store_interface_lists_exactly_what_the_operations_call():
    """Every `store.NAME` the operations (and repo.py) use is a member of
    chunkstore.ChunkStore, and every member is used: a backend implementing the protocol
    is enough for every command."""
    used = set()
    for path in [*(PKG / "ops").glob("*.py"), PKG / "repo.py",
                 *(PKG / "cli").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and (
                    isinstance(node.value, ast.Name) and node.value.id == "store"
                    or isinstance(node.value, ast.Attribute) and node.value.attr == "store"):
                used.add(node.attr)  # store.X, repo.store.X, self.repo.store.X
    used -= _READER_STORE_ONLY
    members = _protocol_members()
    assert used - members == set(), "called on a store but not in ChunkStore"
    assert members - used == set(), "in ChunkStore but called by no operation"


def test_chunk_store_directory_backend_implements_the_interface():
    import inspect

    from backshift import chunkstore
    from backshift.store import Store

    for name in _protocol_members():
        proto = getattr(chunkstore.ChunkStore, name, None)
        if proto is None:  # an attribute: set by __init__
            continue
        impl = getattr(Store, name)
        assert list(inspect.signature(impl).parameters) == \
            list(inspect.signature(proto).parameters), name


def test_every_subpackage_ships_in_the_wheel():
    """pyproject's explicit package list names every folder of backshift/ that holds an
    __init__.py (a new subpackage left out would import in a checkout and be missing from
    an installed wheel)."""
    import tomllib

    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(("backshift", *Path(d).relative_to(PKG).parts))
             for d, _dirs, files in os.walk(PKG, followlinks=True)  # migrations/ is a link
             if "__init__.py" in files}
    assert found == listed


def test_chunk_store_object_backend_implements_the_interface():
    """objstore.ObjectStore has every member of the interface, with the same parameters:
    every command works on a repository whose chunks are in a bucket."""
    import inspect

    from backshift import chunkstore
    from backshift.objstore import ObjectStore

    for name in _protocol_members():
        proto = getattr(chunkstore.ChunkStore, name, None)
        if proto is None:  # an attribute: set by __init__ or on the class
            continue
        impl = getattr(ObjectStore, name)
        assert list(inspect.signature(impl).parameters) == \
            list(inspect.signature(proto).parameters), name
    source = inspect.getsource(ObjectStore.__init__)
    for attr in ("repo", "root", "zstd_level"):
        assert f"self.{attr} =" in source, attr
    assert isinstance(ObjectStore.read_ahead, int) and isinstance(ObjectStore.remove_batch, int)
