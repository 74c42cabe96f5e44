"""Training: the fspo_preference reader, the FSPO unit, criteria wiring, presets, RMSprop and the recipe loader."""
