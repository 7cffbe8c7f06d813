"""Data loading, transforms, collators, samplers and generated datasets."""
