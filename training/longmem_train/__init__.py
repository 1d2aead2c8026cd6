"""longmem's training pipeline: data preparation, leave-one-out splits, recommenders with `full` and
`step` graphs, the evaluation protocols of the SASRec paper and of full ranking, ONNX export and parity."""
