"""Table 5 fixtures: the harness's synthetic GLUE TSVs and Hydra composition (``tests/harness/conftest.py``)."""

from tests.harness.conftest import glue_dir, make_cfg  # noqa: F401  (fixtures)
