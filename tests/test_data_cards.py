"""Every data card parses, has the required fields, and every generated dataset has a card."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "data_cards").glob("*.md"))
REQUIRED = {"name": str, "source": str, "license": str, "modalities": list, "columns": dict, "splits": dict,
            "size": str, "recipes": list, "expected_metrics": dict}


def front_matter(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n"), f"{path.name}: must start with a YAML front matter block"
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("card", CARDS, ids=[c.stem for c in CARDS])
def test_card_fields(card):
    meta = front_matter(card)
    for key, typ in REQUIRED.items():
        assert isinstance(meta.get(key), typ), f"{card.name}: '{key}' must be a {typ.__name__}"
    assert meta["name"] == card.stem
    assert set(meta["modalities"]) <= {"text", "image", "audio", "video"}
    for recipe in meta["recipes"]:
        assert (ROOT / "recipes" / recipe).is_dir(), f"{card.name}: unknown recipe {recipe}"
    assert set(meta["expected_metrics"]) <= set(meta["recipes"])
    assert "## Prepare locally" in card.read_text()


def test_every_generator_has_a_card():
    from mm_ptft.run.components import load_components
    from mm_ptft.data.generated import GENERATORS

    load_components()
    missing = [g for g in GENERATORS.names() if not (ROOT / "data_cards" / f"{g}.md").exists()]
    assert not missing, f"generators without a data card: {missing}"


def test_every_recipe_config_names_a_card():
    for cfg in sorted(ROOT.glob("recipes/*/config.yaml")):
        text = cfg.read_text()
        assert "data_cards/" in text, f"{cfg}: name its data card in a comment (data card: data_cards/<name>.md)"
        name = text.split("data_cards/")[1].split(".md")[0]
        assert (ROOT / "data_cards" / f"{name}.md").exists(), f"{cfg}: data_cards/{name}.md missing"
