"""bench: how well do the remedies for vanishing and exploding gradients in RNNs work?

Tasks (bench.tasks), mitigations (bench.models), one-run training with diagnostics
(bench.train), and the result record (docs/RECORD.md)."""
__version__ = "0.1.0"
