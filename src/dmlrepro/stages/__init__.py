"""The pipeline's stages, one module each: prepare a dataset, extract features, train a run,
evaluate it, build a table, a figure or a paper's claims page. Each takes the validated params and
the study's declared objects and writes the stage's declared outputs; the CLI parses arguments and
calls them. This layer sits above training, evaluation and reporting, which never import it.
"""
