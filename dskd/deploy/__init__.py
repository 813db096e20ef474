"""A trained model on a line: export, predictors for each engine, prediction and overlays."""
