"""The package's import direction (issue 21, item 5), read from the source with ``ast`` (nothing is imported):

- nothing imports ``nnunetv2_ext.trainers`` except nnU-Net's trainer-lookup module (``_nnunet_trainer_path``);
- ``nnunet_adapters`` (the one place that reaches into nnU-Net's internals) imports no other part of the package;
- the graph of the package's top-level parts has no cycles (the last one, between ``losses``, ``networks`` and
  ``two_stage``, went when the two-stage methods got their own folders ``cascade/`` and ``coarse_to_fine/``);
- method packages import only shared parts (``two_stage``, ``losses``, ``nnunet_adapters``, ...), never each other.
A new cycle, or a new import of ``trainers``, fails here. Old module paths kept for users (``nnunetv2_ext._moved``)
look names up by string when used, so they add no edges.
"""
import ast
import importlib
import pkgutil
import pathlib
import warnings

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "nnunetv2_ext"

METHOD_PACKAGES = {"cascade", "coarse_to_fine", "sampling", "semisupervised"}
MAY_IMPORT_TRAINERS = {"_nnunet_trainer_path", "trainers"}


def _module_name(path: pathlib.Path) -> str:
    parts = ("nnunetv2_ext",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> set:
    """(importing module, imported nnunetv2_ext module) for every import statement in the package."""
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    names = [".".join(base + ([node.module] if node.module else []))]
                else:
                    names = [node.module or ""]
            else:
                continue
            edges |= {(module, n) for n in names if n == "nnunetv2_ext" or n.startswith("nnunetv2_ext.")}
    return edges


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "<package>"


def part_graph(edges) -> dict:
    graph = {}
    for a, b in edges:
        if part(a) != part(b):
            graph.setdefault(part(a), set()).add(part(b))
    return graph


def cycle_edges(graph: dict) -> set:
    """Edges (a, b) that lie on a cycle: b reaches a."""
    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            n = todo.pop()
            if n == goal:
                return True
            if n not in seen:
                seen.add(n)
                todo += graph.get(n, ())
        return False
    return {(a, b) for a, bs in graph.items() for b in bs if reaches(b, a)}


def test_the_reader_sees_imports():
    edges = imports()
    assert ("nnunetv2_ext.nnunet_adapters.dataloaders", "nnunetv2_ext.nnunet_adapters.augmenters") in edges  # absolute import
    assert ("nnunetv2_ext.benchmark.report", "nnunetv2_ext.evaluation.components") in edges  # inside a function
    assert cycle_edges({"a": {"b"}, "b": {"c", "a"}, "c": set()}) == {("a", "b"), ("b", "a")}


def test_nothing_imports_trainers():
    offenders = sorted((a, b) for a, b in imports()
                       if part(b) == "trainers" and part(a) not in MAY_IMPORT_TRAINERS)
    assert not offenders, f"these import nnunetv2_ext.trainers (imports flow one way): {offenders}"


def test_nnunet_adapters_import_no_other_part():
    offenders = sorted((a, b) for a, b in imports() if part(a) == "nnunet_adapters" and part(b) != "nnunet_adapters")
    assert not offenders, offenders


def test_no_import_cycles():
    found = cycle_edges(part_graph(imports()))
    assert not found, f"import cycles between the package's parts: {sorted(found)}"


def test_method_packages_do_not_import_each_other():
    offenders = sorted((a, b) for a, b in imports()
                       if part(a) in METHOD_PACKAGES and part(b) in METHOD_PACKAGES and part(a) != part(b))
    assert not offenders, offenders


@pytest.mark.parametrize("old, name, new", [
    ("nnunetv2_ext.networks.cascade_tumour", "CascadeTumorNet", "nnunetv2_ext.cascade.network"),
    ("nnunetv2_ext.networks.cascade_tumour", "FocusModule", "nnunetv2_ext.cascade.blocks"),
    ("nnunetv2_ext.networks.cascade_tumour", "PlansOps", "nnunetv2_ext.two_stage.ops"),
    ("nnunetv2_ext.networks.mln", "MLNFineNet", "nnunetv2_ext.coarse_to_fine.mln"),
    ("nnunetv2_ext.losses.cascade", "CascadeTumorLoss", "nnunetv2_ext.cascade.loss"),
    ("nnunetv2_ext.losses", "CascadeTumorLoss", "nnunetv2_ext.cascade.loss"),
    ("nnunetv2_ext.two_stage.coarse_to_fine", "CoarseToFineNet", "nnunetv2_ext.coarse_to_fine.network"),
    ("nnunetv2_ext.two_stage.coarse_to_fine", "CoarseToFineLoss", "nnunetv2_ext.coarse_to_fine.loss"),
    ("nnunetv2_ext.two_stage.iterative", "IterationLog", "nnunetv2_ext.coarse_to_fine.iterative"),
    ("nnunetv2_ext.two_stage.inference", "sliding_window", "nnunetv2_ext.nnunet_adapters.predictor"),
    ("nnunetv2_ext.trainers.cps", "nnUNetTrainerCPSTiny", "nnunetv2_ext.trainers.small_variants"),
    ("nnunetv2_ext.trainers.pnss_hess", "nnUNetTrainerPNSSHESSDemo", "nnunetv2_ext.trainers.small_variants"),
    ("nnunetv2_ext.semisupervised.pseudolabel", "run_pseudolabel", "nnunetv2_ext.semisupervised.pseudolabel_run"),
    ("nnunetv2_ext.semisupervised.pseudolabel", "write_dataset", "nnunetv2_ext.semisupervised.dataset_writer"),
    ("nnunetv2_ext.semisupervised.pseudolabel", "select_cases", "nnunetv2_ext.semisupervised.selection"),
    ("nnunetv2_ext.semisupervised.pseudolabel", "SCORES_NAME", "nnunetv2_ext.semisupervised.reports"),
    ("nnunetv2_ext.two_stage.inference", "unwrap_network", "nnunetv2_ext.nnunet_adapters.network"),
])
def test_moved_modules_keep_their_old_paths_with_a_warning(old, name, new):
    from importlib import import_module
    with pytest.warns(DeprecationWarning, match=f"moved to {new}.{name}"):
        value = getattr(import_module(old), name)
    assert value is getattr(import_module(new), name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            getattr(import_module(old), "Nothing")


def test_old_import_path_still_works_with_a_warning():
    import nnunetv2_ext.sampling.trainer_mixin as old
    with pytest.warns(DeprecationWarning, match="moved to"):
        mixin = old.PNSSHESSMixin
    from nnunetv2_ext.trainers.sampling_mixin import PNSSHESSMixin
    assert mixin is PNSSHESSMixin
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            old.Nothing


def test_every_trainer_module_exports_its_trainers():
    """nnU-Net finds our trainers through ``from nnunetv2_ext.trainers import *``: a trainer class missing from its
    module's ``__all__`` cannot be found by name (nnUNetv2_train, the benchmark)."""
    import inspect
    import nnunetv2_ext.trainers as package
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    missing = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__
                    and not name.startswith("_") and not hasattr(package, name)):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"not exported: {missing}"
