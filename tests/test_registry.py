import pytest

from mm_ptft.registry import Registry, RegistryError, all_registries, untrusted_source


import itertools

_ids = itertools.count()


def make() -> Registry:
    reg = Registry(f"thing_{next(_ids)}")

    @reg.register()
    def small(width: int = 2, depth: int = 1) -> tuple:
        return ("small", width, depth)

    @reg.register("big")
    def _big(**kw) -> tuple:
        return ("big", kw)

    return reg


def test_build_by_spec_and_bare_name():
    reg = make()
    assert reg.build({"name": "small", "width": 5}) == ("small", 5, 1)
    assert reg.build("small") == ("small", 2, 1)
    assert reg.names() == ["big", "small"]
    assert "small" in reg and "nope" not in reg


def test_duplicate_name_raises():
    reg = make()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("small")(lambda: None)


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match=r"unknown .* 'smal'; known: big, small"):
        make().build({"name": "smal"})


def test_unknown_kwarg_names_the_config_key():
    with pytest.raises(KeyError, match=r"model\.text\.widht"):
        make().build({"name": "small", "widht": 3}, where="model.text")


def test_missing_name_is_an_error():
    with pytest.raises(KeyError, match="missing required key 'name'"):
        make().build({"width": 3}, where="model.image")


def test_runtime_extras_only_passed_when_accepted():
    reg = make()
    assert reg.build({"name": "small"}, corpus=["x"]) == ("small", 2, 1)
    assert reg.build({"name": "big"}, corpus=["x"]) == ("big", {"corpus": ["x"]})


def test_duplicate_registry_kind_raises():
    import mm_ptft.encoders.text  # noqa: F401  (creates text_encoder; was imported after the check, so alone it failed)

    assert "text_encoder" in all_registries()
    with pytest.raises(ValueError):
        Registry("text_encoder")


def test_a_registry_that_records_specs_marks_what_it_builds():
    reg = Registry(f"thing_{next(_ids)}", record_spec=True)

    class Thing:
        def __init__(self, width: int, corpus=None) -> None:
            self.width, self.corpus = width, corpus

    reg.register("thing")(Thing)
    built = reg.build({"name": "thing", "width": 3}, corpus=["runtime, not spec"])
    assert built.spec == {"name": "thing", "width": 3} and built.corpus == ["runtime, not spec"]
    assert not hasattr(make().build("small"), "spec")  # off by default (tuples cannot carry it anyway)


def test_a_builder_with_a_where_parameter_gets_the_config_path_and_yaml_cannot_set_it():
    reg = Registry(f"thing_{next(_ids)}")

    @reg.register()
    def named(width: int = 2, where: str = "default") -> tuple:
        return (width, where)

    assert reg.build({"name": "named", "width": 3}, "model.objectives.lm") == (3, "model.objectives.lm")
    with pytest.raises(KeyError, match=r"unknown key\(s\) model.x.where; accepted: width'$"):
        reg.build({"name": "named", "where": "elsewhere"}, "model.x")


def test_fallback_resolves_a_family_and_error_lists_it():
    reg = make()

    @reg.fallback("shape.<n> (any positive n)")
    def _shape(name: str):
        n = name.removeprefix("shape.")
        return (lambda: ("shape", int(n))) if name.startswith("shape.") and n.isdigit() else None

    assert reg.build("shape.3") == ("shape", 3) and "shape.3" in reg and "shape.x" not in reg
    assert reg.build("small") == ("small", 2, 1)  # registered entries first
    assert reg.names() == ["big", "small"]
    with pytest.raises(KeyError, match=r"known: big, small, shape\.<n> \(any positive n\)"):
        reg.get("shape.x")


# ---- a user's own builder by dotted path: ``module.path:attribute`` --------------------------------------------

USER_MODULE = """
BUILT = []


def widget(width: int = 2, corpus=None):
    BUILT.append(width)
    return ("widget", width, corpus)


class Factory:
    @staticmethod
    def make(depth: int = 1):
        return ("factory", depth)


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module outside the package, importable by name (as a user's own package on PYTHONPATH would be)."""
    name = f"user_builders_{next(_ids)}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_dotted_path_builds_the_users_builder_in_any_registry(user_module):
    reg = make()
    assert reg.build({"name": f"{user_module}:widget", "width": 5}, corpus=["x"]) == ("widget", 5, ["x"])
    assert reg.build(f"{user_module}:Factory.make") == ("factory", 1)  # a nested attribute too
    assert f"{user_module}:widget" in reg  # by its form: membership imports nothing
    import importlib

    assert importlib.import_module(user_module).BUILT == [5]  # the module's own function ran, once
    with pytest.raises(KeyError, match=rf"model\.text\.widht; accepted: width"):
        reg.build({"name": f"{user_module}:widget", "widht": 3}, "model.text")  # kwargs checked like any builder


@pytest.mark.parametrize("attr,message", [
    ("missing_mod_xyz:widget", r"model\.text\.name='missing_mod_xyz:widget': cannot import module 'missing_mod_xyz'"),
    ("{m}:nothing", r"model\.text\.name='{m}:nothing': module '{m}' has no attribute 'nothing'"),
    ("{m}:NOT_CALLABLE", r"model\.text\.name='{m}:NOT_CALLABLE' is a int, not a callable builder"),
])
def test_a_bad_dotted_path_is_an_error_naming_the_key(user_module, attr, message):
    with pytest.raises(RegistryError, match=message.format(m=user_module)):
        make().build({"name": attr.format(m=user_module)}, "model.text")


def test_a_name_with_a_colon_but_not_a_dotted_path_stays_unknown():
    reg = make()
    assert "a b:c" not in reg and "mod:" not in reg
    with pytest.raises(KeyError, match=r"unknown .* 'mod:'; known: big, small, module\.path:builder"):
        reg.get("mod:")


def test_inside_a_received_run_a_dotted_path_is_refused_before_its_module_is_imported(user_module):
    import sys

    with untrusted_source("runs/received"):
        with pytest.raises(RegistryError, match=rf"model\.fusion\.name='{user_module}:widget' .*runs/received.*"
                                                r"pass --trust-remote-code"):
            make().build({"name": f"{user_module}:widget"}, "model.fusion")
        assert make().build("small") == ("small", 2, 1)  # registered builders are not code the config names
    assert user_module not in sys.modules  # refused before the import: none of its code ran
