"""The parts of ``python -m training.evaluate`` (which keeps the config, the run and the CLI):
data (the screen and the evaluated cells), generation (models and generated cells), scores
(metrics per perturbation, group and batch), moa (the MoA classifier), targets (the quality
targets on the seen perturbations).
"""
