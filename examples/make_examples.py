"""Rebuild the small example models bundled in hnn_jax/examples/ (run by `make examples`).

Relations among them, as DESIGN.md orders them:
  cnn_a, cnn_a_{fp16,int8,pruned,dynamo}   same model, re-exported or lightly changed   (relation 1)
  cnn_b                                    same architecture, another initialisation      (relation 2)
  cnn_wide                                 same family, other width                       (relation 3)
  mlp, transformer, keras_cnn              other families / other framework               (relation 4)
"""

import sys
import warnings
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import models  # noqa: E402
import transforms  # noqa: E402
from hnn_jax.converters import export  # noqa: E402

OUT = ROOT / "hnn_jax" / "examples"


def main():
    warnings.simplefilter("ignore")
    OUT.mkdir(exist_ok=True)
    cnn, x = models.torch_cnn(0)
    a = export.torch_to_onnx(cnn, x)
    files = {
        "cnn_a": a,
        "cnn_a_dynamo": export.torch_to_onnx(cnn, x, dynamo=True),
        "cnn_a_fp16": transforms.fp16_weights(a),
        "cnn_a_int8": transforms.int8_dynamic(a),
        "cnn_a_pruned": transforms.prune(a, 0.3),
        "cnn_b": export.torch_to_onnx(*models.torch_cnn(1)),
        "cnn_wide": export.torch_to_onnx(*models.torch_cnn(0, width=16)),
        "mlp": export.torch_to_onnx(*models.torch_mlp(0)),
        "transformer": export.torch_to_onnx(*models.torch_transformer(0)),
        "keras_cnn": export.keras_to_onnx(models.keras_cnn_sequential(0)),
    }
    for name, model in files.items():
        onnx.save(model, OUT / f"{name}.onnx")
        kib = (OUT / f"{name}.onnx").stat().st_size / 1024
        print(f"{name:14s} {len(model.graph.node):4d} ONNX nodes  {kib:7.1f} KiB")


if __name__ == "__main__":
    main()
