"""Measurements of samples and of score fields: the LeNet feature extractor (`lenet`), Frechet
distance, Density/Coverage and class entropy (`sample_quality`), conservativity of a score
field: curl, Asym/NAsym (`conservativity`)."""
