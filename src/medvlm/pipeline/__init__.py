"""The DVC stages, one module each, in pipeline order: download, surrogate, attack, pretrain, features,
finetune, robustness, evaluate, headline.

A stage function is what `stages/<name>.py` calls (through `medvlm.cli.run_stage`): it takes the validated
`Params` and the stage's paths, picks the params that shape its outputs, and calls library functions with
plain arguments. Nothing below this package reads the whole `Params`.
"""
