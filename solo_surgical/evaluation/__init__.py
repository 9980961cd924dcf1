"""Phase recognition evaluation: metrics (MATLAB-identical, relaxed, strict), feature extraction,
linear probe / fine-tuning, MS-TCN temporal model, plots. See ``solo-surgical evaluate --help``."""
