"""The run directory: layout, atomic writes, content-hash cache, tables."""

from mnemoscope.store.atomic import (
    atomic_path,
    write_bytes,
    write_json,
    write_parquet,
    write_safetensors,
    write_text,
)
from mnemoscope.store.cache import code_version, content_hash
from mnemoscope.store.manifest import DatasetInfo, Manifest, StageRecord
from mnemoscope.store.rundir import RunDir, safe_name
from mnemoscope.store.tables import (
    APPLICATIONS,
    ATTACKS,
    CORRELATIONS,
    CROSS_ARCH,
    DETECTION,
    EXAMPLES,
    FITS,
    INFLUENCE,
    INFLUENCE_EVAL,
    LEAKAGE,
    OVERLAP,
    REMOVAL,
    RUN_TABLES,
    SCORES,
    STUDY_TABLES,
    TABLES,
)

__all__ = [
    "APPLICATIONS",
    "ATTACKS",
    "CORRELATIONS",
    "CROSS_ARCH",
    "DETECTION",
    "EXAMPLES",
    "FITS",
    "INFLUENCE",
    "INFLUENCE_EVAL",
    "LEAKAGE",
    "OVERLAP",
    "REMOVAL",
    "SCORES",
    "RUN_TABLES",
    "STUDY_TABLES",
    "TABLES",
    "DatasetInfo",
    "Manifest",
    "RunDir",
    "StageRecord",
    "atomic_path",
    "code_version",
    "content_hash",
    "safe_name",
    "write_bytes",
    "write_json",
    "write_parquet",
    "write_safetensors",
    "write_text",
]
