"""Models and graphs built in code for tests and benchmarks (no model hub): `models` (small
PyTorch, Keras and ONNX models and their twins), `synthetic` (random GraphsTuples of the feature
schema), `fuzzing` (mutated ONNX models and the checks a fuzzed case must pass; needs hypothesis).
Importing them needs the extras their models use (torch, tensorflow) only when a builder runs."""
