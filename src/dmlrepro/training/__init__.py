"""Training regimes over one loop (:mod:`.loop`): the frozen regime trains a head on cached
features (:mod:`.frozen`), the fine-tuning regime trains backbone and head end to end from images
(:mod:`.finetune`)."""
