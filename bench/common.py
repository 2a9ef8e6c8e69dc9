"""Shared by the benchmark scripts: where results go and how they are written."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def write_json(path: Path, data) -> None:
    """Write the numbers next to the other results (creating the folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    print(f"wrote {path}")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (None where getrusage is missing: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def official_birefnet_class(checkout: Path, variant: str):
    """The official code's BiRefNet class, its Config set up for ``variant`` (the official
    Config names one backbone in its source: the backbone fields are set after its own
    __init__). The checkout goes on sys.path: benchmarks only, never the library."""
    import sys

    sys.path.insert(0, str(checkout))
    import config as official_config
    from models.birefnet import BiRefNet as OfficialBiRefNet

    from tests.synthetic import manifest
    embed = manifest(variant)["keys"]["bb.patch_embed.proj.weight"]["shape"][0]
    original_init = official_config.Config.__init__

    def init(self):
        original_init(self)
        self.bb = variant
        channels = [embed * 8, embed * 4, embed * 2, embed]
        if self.mul_scl_ipt == "cat":
            channels = [c * 2 for c in channels]
        self.lateral_channels_in_collection = channels
        self.cxt = channels[1:][::-1][-self.cxt_num:] if self.cxt_num else []
    official_config.Config.__init__ = init
    return OfficialBiRefNet
