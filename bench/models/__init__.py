"""Models: recurrences (cells.py), the sequence model with its readout (seqmodel.py), and the
mitigation recipes and modifiers (mitigations.py)."""
from .mitigations import MITIGATIONS, MODIFIERS, Mitigation, parse_mitigation  # noqa: F401
from .seqmodel import SeqModel, build_model  # noqa: F401
