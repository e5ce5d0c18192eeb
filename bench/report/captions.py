"""The report's figure names and captions, without the plotting stack: the Snakefile reads them
at every Snakemake start (the report rule's outputs and `snakemake --report` captions), and
importing bench.report.figures would pull in matplotlib and seaborn there. figures.py
re-exports both names."""

FIGURE_NAMES = (
    "success_vs_length",
    "success_heatmap",
    "time_to_solve",
    "loss_curves",
    "gradient_profile",
    "decay_vs_length",
    "grad_norms",
    "spectral_radius",
    "gate_means",
    "step_time",
    "radius_decay",
)

CAPTIONS = {
    "success_vs_length": "Success rate against sequence length per task and mitigation, with 95% Wilson intervals "
                         "(runs of the chosen learning rate; error runs excluded).",
    "success_heatmap": "Success rate per mitigation and length (cells: solved/trained runs; * = the learning rate "
                       "was chosen from a grid, see 'Learning-rate choice').",
    "time_to_solve": "Fraction of runs solved by each training step (Kaplan–Meier style), per task at its "
                     "longest lengths (rows: tasks). Unsolved runs are censored at their last step; a diverged run (×) cannot solve "
                     "later, so it stays in the denominator as a failure.",
    "loss_curves": "Held-out loss relative to the memoryless baseline against training step (one line per run) "
                   "at the longest length per task; below 1 the model uses memory.",
    "gradient_profile": "log10 ‖∂L/∂h_t‖ against the distance from the loss (t_loss − t), median over seeds, at "
                        "init and after training, at the longest length per task. A straight falling line is "
                        "exponential vanishing; gaps are exactly-zero gradients (e.g. cut by truncated BPTT).",
    "decay_vs_length": "Fitted per-step gradient factor exp(slope) (median over seeds) against length, at init "
                       "and after training; 1 = neither vanishing nor exploding.",
    "grad_norms": "Distribution of the global gradient norm per training step (before clipping), all steps of "
                  "all seeds at the longest length per task; the dashed line marks clipnorm:1.",
    "spectral_radius": "Spectral radius of the recurrent matrix (W_hh, or the candidate block of gated cells) "
                       "at init and after training, every run; dotted lines at 1.",
    "gate_means": "Mean forget gate (LSTM) / update gate z (GRU: the fraction of h kept) at init and after "
                  "training, median over seeds at the longest length per task.",
    "step_time": "Median milliseconds per training step against sequence length (log–log); the slope is the "
                 "scaling exponent (table below).",
    "radius_decay": "Per-step gradient factor at init against the measured spectral radius of W_hh at init, "
                    "single-matrix tanh RNNs (radius:r modifier, default and orthogonal init); hollow markers, since "
                    "mitigations with the same initialization overlap; × = diverged run.",
}
