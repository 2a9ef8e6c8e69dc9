"""The known-model table: names, repositories, files, resolutions, patch orders and licences
(sources in the README's Models section), and the file-name rules that recognise the names
other packs give the same files."""
from __future__ import annotations

import pytest

from birefnet_core.weights.hub import download_url, lookup_known_model
from birefnet_core.weights.known_models import (
    KNOWN_MODELS,
    _order_from_filename,
    choose_patch_order,
    find_known_model,
)

SQUARE_1K, SQUARE_2K = (1024, 1024), (2048, 2048)

# name: (repository, file, resolution, patch order, licence starts with)
EXPECTED = {
    "BiRefNet": ("ZhengPeng7/BiRefNet", "model.safetensors", SQUARE_1K, "legacy", "MIT"),
    "BiRefNet_lite": ("ZhengPeng7/BiRefNet_lite", "model.safetensors", SQUARE_1K, "legacy", "MIT"),
    "BiRefNet_lite-2K": ("ZhengPeng7/BiRefNet_lite-2K", "model.safetensors", (1440, 2560),
                         "legacy", "MIT"),
    "BiRefNet_HR": ("ZhengPeng7/BiRefNet_HR", "model.safetensors", SQUARE_2K, "current", "MIT"),
    "BiRefNet-matting": ("ZhengPeng7/BiRefNet-matting", "model.safetensors", SQUARE_1K, "legacy",
                         "MIT"),
    "BiRefNet_HR-matting": ("ZhengPeng7/BiRefNet_HR-matting", "model.safetensors", SQUARE_2K,
                            "current", "MIT"),
    "BiRefNet-portrait": ("ZhengPeng7/BiRefNet-portrait", "model.safetensors", SQUARE_1K,
                          "legacy", "MIT"),
    "BiRefNet_dynamic": ("ZhengPeng7/BiRefNet_dynamic", "model.safetensors", SQUARE_1K, "current",
                         "MIT"),
    "BiRefNet_512x512": ("ZhengPeng7/BiRefNet_512x512", "model.safetensors", (512, 512),
                         "current", "MIT"),
    "BiRefNet-DIS5K": ("ZhengPeng7/BiRefNet-DIS5K", "model.safetensors", SQUARE_1K, "legacy", "MIT"),
    "BiRefNet-HRSOD": ("ZhengPeng7/BiRefNet-HRSOD", "model.safetensors", SQUARE_1K, "legacy", "MIT"),
    "BiRefNet-COD": ("ZhengPeng7/BiRefNet-COD", "model.safetensors", SQUARE_1K, "legacy", "MIT"),
    # Added for the 2026 table (issue 13).
    "BiRefNet-DIS5K-TR_TEs": ("ZhengPeng7/BiRefNet-DIS5K-TR_TEs", "model.safetensors", SQUARE_1K,
                              "legacy", "MIT"),
    "BiRefNet-legacy": ("ZhengPeng7/BiRefNet-legacy", "model.safetensors", SQUARE_1K, "legacy",
                        "MIT"),
    "BiRefNet_lite-matting": ("ZhengPeng7/BiRefNet_lite-matting", "model.safetensors", SQUARE_1K,
                              "current", "MIT"),
    "BiRefNet_dynamic-matting": ("ZhengPeng7/BiRefNet_dynamic-matting", "model.safetensors",
                                 SQUARE_1K, "current", "MIT"),
    "BiRefNet-massive": ("ZhengPeng7/BiRefNet-DIS5K-TR_TEs", "model.safetensors", SQUARE_1K,
                         "legacy", "MIT"),
    "RMBG-2.0": ("briaai/RMBG-2.0", "model.safetensors", SQUARE_1K, "legacy", "CC BY-NC 4.0"),
    "ToonOut": ("joelseytre/toonout", "birefnet_finetuned_toonout.pth", SQUARE_1K, "current",
                "MIT"),
    "Lucida": ("egeorcun/lucida", "model.safetensors", SQUARE_1K, "current", "MIT"),
    "Comfy-Org_BiRefNet": ("Comfy-Org/BiRefNet", "background_removal/birefnet.safetensors",
                           SQUARE_1K, "legacy", "MIT"),
    "Comfy-Org_Lucida": ("Comfy-Org/BiRefNet", "background_removal/lucida.safetensors",
                         SQUARE_1K, "current", "MIT"),
}
BACKBONES = {"BiRefNet_lite": "swin_v1_t", "BiRefNet_lite-2K": "swin_v1_t",
             "BiRefNet_lite-matting": "swin_v1_t"}


def test_the_table_is_exactly_the_expected_models():
    assert list(KNOWN_MODELS) == list(EXPECTED)
    for name, model in KNOWN_MODELS.items():
        assert model.name == name
        assert (model.repo_id, model.filename, model.resolution, model.patch_order) == \
            EXPECTED[name][:4], name
        assert model.licence.startswith(EXPECTED[name][4]), (name, model.licence)
        assert model.backbone == BACKBONES.get(name, "swin_v1_l"), name
        assert model.gated == (name == "RMBG-2.0")


def test_local_files_keep_the_repository_files_extension_and_are_unique():
    assert KNOWN_MODELS["ToonOut"].local_filename == "ToonOut.pth"
    assert KNOWN_MODELS["Lucida"].local_filename == "Lucida.safetensors"
    names = [model.local_filename for model in KNOWN_MODELS.values()]
    assert len(names) == len(set(names))


def test_download_addresses_include_subfolders():
    assert download_url(KNOWN_MODELS["Comfy-Org_Lucida"], "https://hub.example") == \
        "https://hub.example/Comfy-Org/BiRefNet/resolve/main/background_removal/lucida.safetensors"
    assert download_url(KNOWN_MODELS["ToonOut"], "https://hub.example") == \
        "https://hub.example/joelseytre/toonout/resolve/main/birefnet_finetuned_toonout.pth"


def test_lookup_by_name_repo_and_case():
    assert lookup_known_model("toonout").name == "ToonOut"
    assert lookup_known_model("egeorcun/lucida").name == "Lucida"
    # BiRefNet-massive and BiRefNet-DIS5K-TR_TEs name one file: either spelling finds it.
    found = lookup_known_model("zhengpeng7/birefnet-dis5k-tr_tes")
    assert (found.repo_id, found.filename) == ("ZhengPeng7/BiRefNet-DIS5K-TR_TEs",
                                               "model.safetensors")
    assert lookup_known_model("Comfy-Org/BiRefNet").name == "Comfy-Org_BiRefNet"


@pytest.mark.parametrize("path, name", [
    ("/hf/models--Comfy-Org--BiRefNet/snapshots/abc/background_removal/lucida.safetensors",
     "Comfy-Org_Lucida"),
    ("/hf/models--Comfy-Org--BiRefNet/snapshots/abc/background_removal/birefnet.safetensors",
     "Comfy-Org_BiRefNet"),
    ("/hf/models--egeorcun--lucida/snapshots/abc/model.safetensors", "Lucida"),
    ("/models/birefnet/ToonOut.pth", "ToonOut"),
    ("/models/birefnet/BiRefNet_dynamic-matting.safetensors", "BiRefNet_dynamic-matting"),
])
def test_files_in_the_hub_cache_or_named_after_a_model_are_recognised(path, name):
    assert find_known_model(path).name == name
    assert choose_patch_order("auto", path) == EXPECTED[name][3]


# The names other packs and tools give these files, and the order each must get.
@pytest.mark.parametrize("file, order", [
    ("birefnet_finetuned_toonout.pth", "current"),          # ToonOut's own release name
    ("BiRefNet-ToonOut-F16.safetensors", "current"),
    ("lucida.safetensors", "current"),                      # core's repackaged Lucida
    ("lucida-m35-comfy.safetensors", "current"),            # Lucida's folded ComfyUI export
    ("BiRefNet_lite-matting.safetensors", "current"),       # ComfyUI-RMBG
    ("Matting-Lite.safetensors", "current"),
    ("BiRefNet_dynamic-matting.safetensors", "current"),
    ("Matting-dynamic.safetensors", "current"),
    ("BiRefNet-legacy.safetensors", "legacy"),
    ("General-legacy.safetensors", "legacy"),               # ComfyUI_BiRefNet_ll
    ("BiRefNet-massive-epoch_240.pth", "legacy"),           # the official Drive/Space files
    ("BiRefNet-massive-TR_DIS5K_TR_TEs-epoch_420.pth", "legacy"),
    ("birefnet-massive.safetensors", "legacy"),             # rembg's name
    ("DIS-TR_TEs.safetensors", "legacy"),                   # ComfyUI_BiRefNet_ll
    ("BiRefNet-DIS5K-TR_TEs.safetensors", "legacy"),
    ("birefnet.safetensors", "legacy"),                     # core's repackaged BiRefNet
    ("General-Lite.safetensors", "legacy"),                 # unchanged older rules
    ("BiRefNet_HR-general-epoch_130.pth", "current"),
    ("my_finetune.safetensors", "current"),                 # unknown: today's official order
])
def test_file_names_of_other_packs_get_the_right_order(file, order):
    assert _order_from_filename(f"/models/birefnet/{file}")[0] == order
