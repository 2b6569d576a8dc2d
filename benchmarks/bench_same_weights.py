"""Files that hold the same trained weights, and independently trained models (issue 29's
real-weights set, built here: no model hub, and none of the packages held out in issue 28).

Models are trained to convergence on data that ships with scikit-learn (the 8x8 digits, 0-3,
upsampled to 16x16x3), each from its own seed:
- `keras`: hnn_jax/testing/models.keras_cnn_sequential (conv, BatchNorm, relu, pool, LayerNorm, dense gelu,
  dense swish), trained with Adam; its files:
  - `keras->onnx` (converters.from_keras, the reference), `tflite` (TFLiteConverter, read by
    converters.from_tflite), `tflite_fp16` (float16 weights), `onnx_opset13` (tf2onnx at 13),
    `onnx_fp16` (onnxconverter-common, if installed), `int8_dynamic` (onnxruntime), and
  - `torch_twin`: hnn_jax/testing/models.torch_twin_of_keras_cnn holding the copied weights (kernels
    HWIO -> OIHW, dense kernels transposed, BatchNorm statistics and epsilons), exported by
    converters.from_torch; `torch_twin_dynamo` the same through the dynamo exporter.
- `torch`: a PyTorch CNN (hnn_jax/testing/models.torch_cnn) trained the same way; its files: TorchScript
  export (reference), dynamo export, fp16 weights, int8 dynamic, onnxruntime's extended level.

For each file: architecture and weight distances to its reference, HashCode.relation, and the
chance of an independent model lying this close (WeightBand.chance). Then every pair of
independently trained models of one architecture (--seeds of them): the least weight distance
and how many pairs fall in the same-model band (target 0).

    python benchmarks/bench_same_weights.py [--seeds 4] [--epochs 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import hnn_jax
from hnn_jax import converters
from hnn_jax.training import variants
from hnn_jax.converters import export


def digits():
    """sklearn's digits 0-3 as 16x16x3 images in [0, 1] (NHWC), and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits(n_class=4)
    images = np.repeat(np.repeat(data.images / 16.0, 2, axis=1), 2, axis=2)  # 8x8 -> 16x16
    return np.repeat(images[..., None], 3, axis=-1).astype(np.float32), data.target.astype(np.int64)


def train_keras(seed: int, epochs: int):
    import keras
    from hnn_jax.testing import models

    x, y = digits()
    model = models.keras_cnn_sequential(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model, float(history.history["accuracy"][-1])


def train_torch(seed: int, epochs: int):
    import torch
    from hnn_jax.testing import models

    x, y = digits()
    net, _ = models.torch_cnn(seed)
    net.train()
    images = torch.tensor(x.transpose(0, 3, 1, 2))
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    torch.manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(images[batch]), torch.tensor(y)[batch])
            loss.backward()
            optimiser.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(images).argmax(1).numpy() == y).mean())
    return net, accuracy, images[:1]


def keras_files(model, tmp: Path) -> dict:
    import tensorflow as tf

    from hnn_jax.testing import models

    files = {"keras->onnx": export.keras_to_onnx(model)}
    path = tmp / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    files["tflite"] = export.tflite_to_onnx(path)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    path16 = tmp / "model_fp16.tflite"
    path16.write_bytes(converter.convert())
    files["tflite_fp16"] = path16
    files["onnx_opset13"] = export.keras_to_onnx(model, opset=13)
    with contextlib.suppress(ImportError):
        from onnxconverter_common import float16

        files["onnx_fp16"] = float16.convert_float_to_float16(files["keras->onnx"], keep_io_types=True)
    files["int8_dynamic"] = variants.int8_dynamic(files["keras->onnx"])
    twin, x = models.torch_twin_of_keras_cnn(0)
    models.copy_keras_weights_into_twin(model, twin, statistics=False)
    files["torch_twin"] = export.torch_to_onnx(twin, x)
    files["torch_twin_dynamo"] = export.torch_to_onnx(twin, x, dynamo=True)
    return files


def torch_files(net, example) -> dict:
    reference = export.torch_to_onnx(net, example)
    return {"torchscript": reference, "dynamo": export.torch_to_onnx(net, example, dynamo=True),
            "fp16_weights": variants.fp16_weights(reference), "int8_dynamic": variants.int8_dynamic(reference),
            "ort_extended": variants.ort_optimized(reference, "ORT_ENABLE_EXTENDED")}


def code_of(item):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        graph = converters.from_file(item) if isinstance(item, Path) else converters.from_onnx(item)
    return hnn_jax.hash(graph)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4, help="independently trained models per architecture")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows, nulls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("keras", "torch"):
            references = []
            for seed in range(args.seeds):
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    if arch == "keras":
                        model, accuracy = train_keras(seed, args.epochs)
                        files = keras_files(model, Path(tmp)) if seed == 0 else {
                            "keras->onnx": export.keras_to_onnx(model)}
                    else:
                        net, accuracy, example = train_torch(seed, args.epochs)
                        files = torch_files(net, example) if seed == 0 else {
                            "torchscript": export.torch_to_onnx(net, example)}
                codes = {}
                for name, item in files.items():
                    try:
                        codes[name] = code_of(item)
                    except Exception as e:  # noqa: BLE001 - reported as a row
                        rows.append({"arch": arch, "file": name, "error": f"{type(e).__name__}: {e}"[:160]})
                reference_name = next(iter(files))
                reference = codes[reference_name]
                references.append(reference)
                print(f"[{arch}] seed {seed}: train accuracy {accuracy:.3f}", flush=True)
                if seed:
                    continue
                for name, code in codes.items():
                    if name == reference_name:
                        continue
                    d = reference.distances(code)
                    rows.append({"arch": arch, "file": name, "architecture": d.architecture, "weights": d.weights,
                                 "relation": reference.relation(code)[0], "chance": reference.chance(code)})
            for a, b in itertools.combinations(range(len(references)), 2):
                d = references[a].distances(references[b])
                nulls.append({"arch": arch, "pair": [a, b], "architecture": d.architecture, "weights": d.weights,
                              "relation": references[a].relation(references[b])[0]})
    print("\n| trained model | file | architecture bits | weight bits | relation | chance |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['arch']} | {r['file']} | error | | | {r['error'].replace('|', '/')} |")
        else:
            print(f"| {r['arch']} | {r['file']} | {r['architecture']} | {r['weights']} | {r['relation']} | "
                  f"{r['chance']:.1e} |")
    print("\n| architecture | independent pairs | least weight distance | same-model verdicts |")
    print("|---|---|---|---|")
    for arch in ("keras", "torch"):
        pairs = [n for n in nulls if n["arch"] == arch]
        if pairs:
            print(f"| {arch} | {len(pairs)} | {min(p['weights'] for p in pairs)} | "
                  f"{sum(p['relation'] == 'same-model' for p in pairs)} |")
    if args.json:
        args.json.write_text(json.dumps({"files": rows, "independent": nulls}, indent=1))


if __name__ == "__main__":
    main()
