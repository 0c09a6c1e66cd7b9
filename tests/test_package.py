"""The package surface: exported names, and no heavy imports or side effects at import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dask_clip


def test_all_lists_exactly_the_public_names():
    assert dask_clip.__all__ == sorted(dask_clip.__all__)
    for name in dask_clip.__all__:
        assert getattr(dask_clip, name).__name__ == name


@pytest.mark.slow  # a fresh interpreter: what it imports is what is tested
def test_import_loads_neither_torch_nor_a_gpu_library():
    code = (
        "import sys, dask_clip, dask_clip.worker_setup; "
        "print(sorted(m for m in ('torch', 'open_clip', 'cupy', 'cudf') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow  # a fresh interpreter: what it imports is what is tested
def test_planning_a_model_dir_job_on_the_client_imports_no_torch(model_dir, tmp_path):
    """The client reads, validates and plans; the workers import torch. Importing torch and
    open_clip on the client costs seconds of a short job's start."""
    from dask_clip.testing import encode_image, photo_crops

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, crop in enumerate(photo_crops(3, seed=0)):
        (folder / f"{i}.jpg").write_bytes(encode_image(crop))
    code = (
        "import sys; from dask_clip import ImageEmbedder; from dask_clip.embed.jobs import prepare_embed; "
        f"job = prepare_embed({str(folder)!r}, {str(tmp_path / 'out')!r}, ImageEmbedder(model_dir={model_dir!r})); "
        "print(len(job.todo), sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1 []"


def _imports(path, modules: set[str], name: str) -> set[str]:
    """The dask_clip modules one module imports, anywhere in it (lazy imports in functions
    too), except under ``if TYPE_CHECKING:``, which never runs."""
    import ast

    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            yield child
            yield from walk(child)

    found: set[str] = set()
    for node in walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles_between_the_packages_modules():
    from pathlib import Path

    root = Path(dask_clip.__file__).parent
    paths = {}
    for path in root.rglob("*.py"):
        name = ".".join(("dask_clip", *path.relative_to(root).with_suffix("").parts))
        paths[name.removesuffix(".__init__")] = path
    graph = {name: _imports(path, set(paths), name) for name, path in paths.items()}
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        for target in graph[name]:
            if target in stack:
                cycles.append(stack[stack.index(target) :])
            elif len(stack) < 20:
                visit(target, [*stack, target])

    for name in graph:
        visit(name, [name])
    assert cycles == []
