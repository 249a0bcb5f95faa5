"""docs/config.md is generated from the config's field descriptions and must not drift from them."""

from pathlib import Path

from openrlaif.config import RunConfig, config_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_md_is_the_generated_reference():
    assert DOC.read_text(encoding="utf-8") == config_reference(), (
        "docs/config.md is stale: run `make docs` (it writes openrlaif.config.config_reference()) and commit it")


def test_every_field_is_documented_once_with_a_description():
    text = config_reference()

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            sub = [a for a in (getattr(field.annotation, "__args__", None) or (field.annotation,))
                   if isinstance(a, type) and hasattr(a, "model_fields")]
            if sub:
                yield from keys(sub[0], f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", field

    fields = list(keys(RunConfig))
    assert len(fields) > 80
    for key, field in fields:
        assert text.count(f"| `{key}` |") == 1, key
        assert field.description, f"{key} has no description: say what it does where it is declared"
