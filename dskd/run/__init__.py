"""One run's life: its settings, training, the maps' statistics, evaluation, the decision, its folder."""
