"""What the pipeline reads and how it is made fit to train on: the ESCO download and tables
(`esco`, `tables`), their contracts (`validation` with Great Expectations, `checks` for what GX
cannot say), and the prepared task: splits, frozen eval sets, mined negatives (`preparation`)."""
