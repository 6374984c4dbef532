"""`make bench` (`python -m cidemo_infra.bench`): measurements, each against a baseline
from the same run."""
