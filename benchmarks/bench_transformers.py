"""Which Hugging Face transformers model types build from a tiny config, export and hash here
(issue 17): the list behind hnn_jax.training.zoo.TRANSFORMERS_TYPES.

    python benchmarks/bench_transformers.py                  # the zoo's types, every size
    python benchmarks/bench_transformers.py --candidates     # the wider candidate list, first size
    python benchmarks/bench_transformers.py --types bert,gpt2 --json out.json

Prints one row per type and size: parameters, ONNX and canonical node counts, export and total
seconds (hf.transformers_to_onnx: TorchScript, or dynamo where tracing fails), or the first
line of the error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from collections import Counter

from hnn_jax.errors import first_line

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CANDIDATES = """
albert bert big_bird camembert canine convbert data2vec-text deberta deberta-v2 distilbert electra ernie esm
flaubert fnet funnel ibert layoutlm lilt longformer luke markuplm megatron-bert mobilebert modernbert mpnet mra
nomic_bert nystromformer rembert roberta roberta-prelayernorm roc_bert roformer splinter squeezebert xlm
xlm-roberta xlm-roberta-xl yoso
biogpt bloom codegen cohere cohere2 ctrl falcon gemma gemma2 gemma3_text glm glm4 gpt2 gpt_bigcode gpt_neo
gpt_neox gptj granite helium llama mistral mpt nemotron olmo olmo2 openai-gpt opt persimmon phi phi3 qwen2
qwen3 stablelm starcoder2 xglm smollm3 exaone4 ministral seed_oss arcee apertus doge jetmoe deepseek_v2
hunyuan_v1_dense internlm3 lfm2 vaultgemma bitnet ernie4_5 mamba mamba2 rwkv falcon_mamba
bart mbart marian pegasus blenderbot blenderbot-small m2m_100 fsmt led plbart prophetnet t5 mt5 umt5 longt5
switch_transformers mvp bigbird_pegasus pegasus_x
vit deit beit data2vec-vision dinov2 dinov2_with_registers swin swinv2 convnext convnextv2 resnet regnet bit
efficientnet mobilenet_v1 mobilenet_v2 mobilevit mobilevitv2 levit cvt poolformer pvt pvt_v2 segformer focalnet
glpn dpt vit_msn yolos ijepa hiera swiftformer textnet hgnet_v2
wav2vec2 wav2vec2-conformer hubert wavlm sew sew-d unispeech unispeech-sat data2vec-audio whisper speech_to_text
moonshine
""".split()


class Timeout(Exception):
    pass


def _alarm(*_):
    raise Timeout("past the time limit")


def try_type(model_type: str, size, seed: int = 0, limit: int = 120) -> dict:
    import hnn_jax
    from hnn_jax.training import zoo
    from hnn_jax.converters import canonicalize, from_onnx, hf

    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, kwargs = zoo.transformers_model(model_type, size, seed)
            params = sum(p.numel() for p in model.parameters())
            t1 = time.perf_counter()
            proto = hf.transformers_to_onnx(model)
            exported = time.perf_counter() - t1
            canonical = len(canonicalize(proto).nodes)
            code = hnn_jax.hash(from_onnx(proto))
        return dict(type=model_type, size=list(size), ok=True, params=params, onnx_nodes=len(proto.graph.node),
                    canonical_nodes=canonical, export_s=round(exported, 1), seconds=round(time.perf_counter() - t0, 1),
                    code=str(code))
    except BaseException as e:  # a row per failure, whatever it is
        if isinstance(e, KeyboardInterrupt):
            raise
        return dict(type=model_type, size=list(size), ok=False, error=f"{type(e).__name__}: {first_line(e)[:160]}",
                    seconds=round(time.perf_counter() - t0, 1))
    finally:
        signal.alarm(0)


def main(argv=None) -> int:
    from hnn_jax.training import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", help="comma-separated model types")
    parser.add_argument("--candidates", action="store_true", help="the wider candidate list, not the zoo's")
    parser.add_argument("--sizes", default=None, help="comma-separated indices into zoo.TRANSFORMERS_SIZES "
                        "(default: all for the zoo's types, 0 for --candidates)")
    parser.add_argument("--json", help="write the rows to this path")
    args = parser.parse_args(argv)
    types = (args.types.split(",") if args.types else CANDIDATES if args.candidates
             else list(zoo.TRANSFORMERS_MODALITY))
    sizes = ([int(k) for k in args.sizes.split(",")] if args.sizes
             else [0] if args.candidates else list(range(len(zoo.TRANSFORMERS_SIZES))))
    rows = []
    print("| type | modality | size | params | ONNX nodes | canonical nodes | export s | s | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in types:
        for k in sizes:
            row = try_type(t, zoo.TRANSFORMERS_SIZES[k])
            rows.append(row)
            modality = zoo.TRANSFORMERS_MODALITY.get(t, "")
            if row["ok"]:
                print(f"| {t} | {modality} | {k} | {row['params']:,} | {row['onnx_nodes']} | "
                      f"{row['canonical_nodes']} | {row['export_s']} | {row['seconds']} | |", flush=True)
            else:
                print(f"| {t} | {modality} | {k} | - | - | - | - | {row['seconds']} | {row['error']} |", flush=True)
    ok = {r["type"] for r in rows if r["ok"]}
    all_sizes = {t for t in ok if all(r["ok"] for r in rows if r["type"] == t)}
    by_modality = Counter(zoo.TRANSFORMERS_MODALITY.get(t, "candidate") for t in all_sizes)
    print(f"\n{len(all_sizes)} of {len(types)} types export at every size tried "
          f"({', '.join(f'{m} {n}' for m, n in sorted(by_modality.items()))}); "
          f"{sum(r['ok'] for r in rows)} of {len(rows)} builds")
    failed = sorted(set(types) - all_sizes)
    if failed:
        print("failed: " + ", ".join(failed))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
