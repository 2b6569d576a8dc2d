"""Hash a Hugging Face snapshot (config.json + safetensors shards) without materialising it.

Writes a Llama-shaped checkpoint with random weights, tensor by tensor, ~2 GB a shard (only
one shard is ever in memory here), then in a fresh process runs converters.from_snapshot's steps
and hnn_jax.hash, timing each: export (the model on the meta device through torch.export and the
ONNX exporter, weights pointed at in the shards), canonical, probe (skipped above 1 GiB of
weights), features, hash (hasher load + jit compile + GNN). "peak RSS growth" is the process's
peak RSS (VmHWM, reset after each step) over its RSS right after the imports (torch,
transformers, hnn_jax). Issue 15's targets: 1.1B in <= 60 s, 7B in <= 5 min, both <= 2 GB.

--format gguf-q4_0 (or gguf-q8_0) writes the same weights as llama.cpp's converter would (its
names, query and key rows permuted, norms F32, matrices block-quantised by gguf) into one .gguf
file and times converters.from_gguf's steps instead: "export" then includes dequantising every
tensor into the scratch data file (issue 30's target: a 7B GGUF in <= 5 min, <= 2 GB).

    python benchmarks/bench_checkpoint.py --size 1b [--dir /tmp/hnn_checkpoints] [--keep]
    python benchmarks/bench_checkpoint.py --size 1b --format gguf-q4_0
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SIZES = {  # Llama shapes: TinyLlama-1.1B and Llama-2-7B
    "tiny": dict(layers=2, hidden=64, intermediate=176, heads=4, kv_heads=2, vocab=1000, dtype="float32"),
    "1b": dict(layers=22, hidden=2048, intermediate=5632, heads=32, kv_heads=4, vocab=32000, dtype="float32"),
    "7b": dict(layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000, dtype="float16"),
}
SHARD_BYTES = 2_000_000_000


def tensors(s: dict):
    """(name, shape) of LlamaForCausalLM's weights, in checkpoint order."""
    h, i, kv = s["hidden"], s["intermediate"], s["kv_heads"] * s["hidden"] // s["heads"]
    yield "model.embed_tokens.weight", (s["vocab"], h)
    for n in range(s["layers"]):
        p = f"model.layers.{n}."
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "mlp.gate_proj.weight", (i, h)
        yield p + "mlp.up_proj.weight", (i, h)
        yield p + "mlp.down_proj.weight", (h, i)
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (s["vocab"], h)


def write_checkpoint(folder: Path, s: dict) -> None:
    """config.json, shards of ~SHARD_BYTES and the index, one shard in memory at a time."""
    import numpy as np
    import transformers
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    transformers.LlamaConfig(
        hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], vocab_size=s["vocab"],
        max_position_embeddings=2048, tie_word_embeddings=False, architectures=["LlamaForCausalLM"],
        dtype=s["dtype"]).to_json_file(folder / "config.json")
    dtype = np.dtype(s["dtype"])
    shards, shard, size = [], {}, 0

    def flush():
        nonlocal shard, size
        shards.append(shard)
        save_file(shard, str(folder / f"part-{len(shards):05d}.safetensors"), metadata={"format": "pt"})
        shard, size = {}, 0

    for name, value in values(s):
        value = value.astype(dtype, copy=False)
        if size and size + value.nbytes > SHARD_BYTES:
            flush()
        shard[name] = value
        size += value.nbytes
    flush()
    total = len(shards)
    weight_map = {}
    for k, names in enumerate(shards, 1):
        final = f"model-{k:05d}-of-{total:05d}.safetensors"
        (folder / f"part-{k:05d}.safetensors").rename(folder / final)
        weight_map.update({n: final for n in names})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def values(s: dict):
    """(name, float32 array) of the checkpoint's tensors: norms at one, matrices N(0, 0.02) from
    seed 0 (write_checkpoint and write_gguf write the same weights)."""
    import numpy as np

    rng = np.random.default_rng(0)
    for name, shape in tensors(s):
        yield name, (np.ones(shape, np.float32) if len(shape) == 1
                     else rng.standard_normal(shape, dtype=np.float32) * 0.02)


def write_gguf(path: Path, s: dict, quantisation: str) -> None:
    """The checkpoint's tensors (values(s), as write_checkpoint's) as one GGUF file."""
    from hnn_jax.testing.models import write_gguf as write

    write(path, s, values(s), quantisation, name="bench-llama", context=2048, rope_theta=10000.0, rms_eps=1e-6)


STEP = r"""
import json, time, warnings
warnings.simplefilter("ignore")
import torch, transformers
import hnn_jax
from hnn_jax import converters
from hnn_jax.converters import canonicalize, snapshot
from hnn_jax.converters.features import to_graphs_tuple
from hnn_jax.converters.load import load_onnx
from hnn_jax.converters.probe import run_probe

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS

base = status("VmRSS")
out = dict(base=base)
def step(name, fn):
    reset_peak()
    start = time.perf_counter()
    value = fn()
    out[name] = dict(seconds=time.perf_counter() - start, peak=status("VmHWM") - base)
    return value

import tempfile
from hnn_jax.converters import gguf
scratch = tempfile.mkdtemp(prefix="hnn-bench-")
if {folder!r}.endswith(".gguf"):
    proto, folder = step("export", lambda: gguf.gguf_to_onnx({folder!r}, scratch))
else:
    proto, folder = step("export", lambda: snapshot.snapshot_to_onnx({folder!r}, scratch))
model, folder = load_onnx(proto, folder)
graph = step("canonical", lambda: canonicalize(model, folder))
result = step("probe", lambda: run_probe(graph.model, [n.tensor for n in graph.nodes], folder=graph.folder))
g = step("features", lambda: to_graphs_tuple(graph, result))
code = step("hash", lambda: hnn_jax.hash(g))
out.update(code=str(code), nodes=len(proto.graph.node), canonical_nodes=int(g.n_node[0]),
           probe_reason=result.reason or "ran")
import shutil
shutil.rmtree(scratch)  # a quantised file's dequantised weights
print(json.dumps(out))
"""


def run(folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP.format(folder=str(folder))], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"hashing {folder} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="override the size's dtype")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hnn_checkpoints"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint (default: delete it)")
    parser.add_argument("--format", choices=["safetensors", "gguf-q4_0", "gguf-q8_0"], default="safetensors")
    args = parser.parse_args()
    s = dict(SIZES[args.size], **({"dtype": args.dtype} if args.dtype else {}))
    folder = args.dir / f"llama_{args.size}_{s['dtype']}"
    params = sum(int(__import__("math").prod(shape)) for _, shape in tensors(s))
    need = params * (4 if s["dtype"] == "float32" else 2)
    if args.format != "safetensors":
        folder = args.dir / f"llama_{args.size}_{args.format}.gguf"
        if not folder.is_file():
            args.dir.mkdir(parents=True, exist_ok=True)
            print(f"writing {params / 1e9:.2f}B parameters as {args.format} to {folder} ...", flush=True)
            write_gguf(folder, s, args.format.split("-")[1])
        s["dtype"] = args.format
    elif not (folder / "model.safetensors.index.json").is_file():
        args.dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(args.dir).free
        if free < need * 1.1:
            raise SystemExit(f"{args.dir}: {free / 1e9:.1f} GB free, the checkpoint needs {need / 1e9:.1f} GB")
        print(f"writing {params / 1e9:.2f}B parameters ({need / 1e9:.1f} GB) to {folder} ...", flush=True)
        write_checkpoint(folder, s)
    size = folder.stat().st_size if folder.is_file() else sum(p.stat().st_size for p in folder.iterdir())
    try:
        r = run(folder)
    finally:
        if not args.keep:
            folder.unlink() if folder.is_file() else shutil.rmtree(folder)
    steps = ["export", "canonical", "probe", "features", "hash"]
    total = sum(r[k]["seconds"] for k in steps)
    print(f"\n{args.size}: {params / 1e6:,.0f}M parameters, {s['dtype']}, {size / 1e9:.2f} GB on disk; "
          f"{r['nodes']} ONNX nodes -> {r['canonical_nodes']} canonical; probe: {r['probe_reason']}; "
          f"RSS after imports {r['base'] / 2**20:.0f} MiB\n")
    print("| step | seconds | peak RSS growth (MiB) |")
    print("|---|---|---|")
    for k in steps:
        print(f"| {k} | {r[k]['seconds']:.1f} | {r[k]['peak'] / 2**20:.0f} |")
    print(f"| total | {total:.1f} | {max(r[k]['peak'] for k in steps) / 2**20:.0f} |")
    print(f"\ncode: {r['code']}")


if __name__ == "__main__":
    main()
