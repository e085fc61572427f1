"""Making a model: loading it (`modeling`), the trainer and its rounds (`trainer`), the batches it
learns from (`batches`), its checkpoints kept in the store (`checkpoints`), several processes
(`distributed`), the hyperparameter search and its workers (`tuning`, `tuning_workers`), and the
progress lines all of them print (`progress`)."""
