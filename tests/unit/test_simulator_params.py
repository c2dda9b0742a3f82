"""The simulator's own parameter tables (devtools/simulator/params.py), written from
docs/provider.md, and where they and the product's schemas agree: two independent
readings of one document, so a boundary one of them misread shows up here."""

from __future__ import annotations

from typing import Any

import pytest

from devtools.simulator.params import FLUX_DEV_LORA, FLUX_KREA_DEV_LORA, InvalidInput, validate
from service.domain.errors import ValidationFailed
from service.domain.schemas import validate_input


def test_defaults_are_filled_in_from_the_table() -> None:
    assert validate(FLUX_DEV_LORA, {"prompt": "p"}) == {
        "prompt": "p", "strength": 0.8, "size": "1024*1024", "guidance_scale": 3.5, "seed": -1,
        "output_format": "jpeg", "enable_base64_output": False, "enable_sync_mode": False, "loras": [],
        "num_inference_steps": 28, "num_images": 1,
    }
    assert "num_images" not in validate(FLUX_KREA_DEV_LORA, {"prompt": "p"})


# (model, body, the field the first problem names)
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (FLUX_DEV_LORA, {}, "prompt"),
    (FLUX_DEV_LORA, {"prompt": ""}, "prompt"),
    (FLUX_DEV_LORA, {"prompt": 5}, "prompt"),
    (FLUX_DEV_LORA, {"prompt": "p", "size": "255*256"}, "size"),
    (FLUX_DEV_LORA, {"prompt": "p", "size": "1024x1024"}, "size"),
    (FLUX_DEV_LORA, {"prompt": "p", "strength": 1.01}, "strength"),
    (FLUX_DEV_LORA, {"prompt": "p", "strength": True}, "strength"),
    (FLUX_DEV_LORA, {"prompt": "p", "guidance_scale": -0.1}, "guidance_scale"),
    (FLUX_DEV_LORA, {"prompt": "p", "num_inference_steps": 51}, "num_inference_steps"),
    (FLUX_DEV_LORA, {"prompt": "p", "num_inference_steps": 2.0}, "num_inference_steps"),
    (FLUX_DEV_LORA, {"prompt": "p", "num_images": 0}, "num_images"),
    (FLUX_DEV_LORA, {"prompt": "p", "seed": -2}, "seed"),
    (FLUX_DEV_LORA, {"prompt": "p", "seed": 2147483648}, "seed"),
    (FLUX_DEV_LORA, {"prompt": "p", "output_format": "gif"}, "output_format"),
    (FLUX_DEV_LORA, {"prompt": "p", "enable_sync_mode": "yes"}, "enable_sync_mode"),
    (FLUX_DEV_LORA, {"prompt": "p", "image": "ftp://a/b"}, "image"),
    (FLUX_DEV_LORA, {"prompt": "p", "loras": [{"path": "a", "scale": 1}] * 5}, "loras"),
    (FLUX_DEV_LORA, {"prompt": "p", "loras": [{"path": "a", "scale": 4.5}]}, "loras.0.scale"),
    (FLUX_DEV_LORA, {"prompt": "p", "loras": [{"scale": 1}]}, "loras.0.path"),
    (FLUX_DEV_LORA, {"prompt": "p", "loras": [{"path": "a", "scale": 1, "x": 1}]}, "loras.0.x"),
    (FLUX_DEV_LORA, {"prompt": "p", "colour": "red"}, "colour"),
    (FLUX_KREA_DEV_LORA, {"prompt": "p", "num_images": 2}, "num_images"),
    (FLUX_KREA_DEV_LORA, {"prompt": "p", "mask_image": "https://a/m.png"}, "mask_image"),
    (FLUX_KREA_DEV_LORA, {"prompt": "p", "num_inference_steps": 10}, "num_inference_steps"),
    (FLUX_KREA_DEV_LORA, {"prompt": "p", "loras": [{"path": "a", "scale": 1}] * 4}, "loras"),
]

ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    (FLUX_DEV_LORA, {"prompt": "p", "size": "256*1536", "strength": 0, "guidance_scale": 20, "seed": 2147483647,
                     "num_inference_steps": 1, "num_images": 4, "output_format": "webp",
                     "loras": [{"path": "owner/repo", "scale": 4.0}] * 4, "image": "https://a/i.png"}),
    (FLUX_KREA_DEV_LORA, {"prompt": "p", "size": "1536*256", "loras": [{"path": "a", "scale": 0}] * 3, "seed": -1}),
]


@pytest.mark.parametrize(("model", "body", "field"), REFUSED)
def test_the_simulator_refuses_naming_the_field(model: str, body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate(model, body)
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(("model", "body"), ACCEPTED)
def test_the_simulator_accepts_the_documented_extremes(model: str, body: dict[str, Any]) -> None:
    assert validate(model, body)["prompt"] == "p"


def _product_accepts(model: str, body: dict[str, Any]) -> bool:
    try:
        validate_input(model, body)
    except ValidationFailed:
        return False
    return True


@pytest.mark.parametrize(("model", "body"), [(m, b) for m, b, _ in REFUSED] + ACCEPTED)
def test_the_product_and_the_simulator_read_the_tables_alike(model: str, body: dict[str, Any]) -> None:
    try:
        validate(model, body)
        simulator_accepts = True
    except InvalidInput:
        simulator_accepts = False
    assert _product_accepts(model, body) == simulator_accepts


def test_where_the_product_is_stricter_than_the_document() -> None:
    # The document says a mask is "only meaningful with image", not that it is refused:
    # the provider's reading is lenient, the product refuses the pointless combination.
    body = {"prompt": "p", "mask_image": "https://a/m.png"}
    assert validate(FLUX_DEV_LORA, body)["mask_image"] == "https://a/m.png"
    assert not _product_accepts(FLUX_DEV_LORA, body)
