"""Cold start of two trees in one run: `python -m tests.bench.coldstart_compare OTHER_TREE [SAMPLES]`.

OTHER_TREE is another checkout of this repository (e.g. `git archive main | tar -x -C /tmp/base`).
Every function of both trees is imported as in Lambda (coldstart.sample: pyOpenSSL and awscrt
blocked, the template's environment, tracing on), interleaved with `import boto3` round by
round after one discarded round, so before and after see the same machine. Prints wall and
CPU (process_time) medians and minima as ratios to boto3; writes .bench/coldstart_compare.json.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import tests.bench.__main__  # noqa: F401 - the benchmark's fake AWS environment, before boto3
from local.stack import ROOT, Stack
from tests.bench.coldstart import LAMBDA_BASE, STACK_PARAMETERS, environment, sample
from tests.bench.harness import RESULTS_DIR


def main(argv: list[str]) -> int:
    other, samples = Path(argv[0]).resolve(), int(argv[1]) if len(argv) > 1 else 15
    stack = Stack(parameters=STACK_PARAMETERS)
    functions = {logical: res["Properties"]["CodeUri"].strip("/").split("/")[-1]
                 for logical, res in sorted(stack.of_type("AWS::Serverless::Function").items())}
    probes = {LAMBDA_BASE: ("boto3", "", environment(stack, next(iter(functions))))}
    for logical, name in functions.items():
        env = environment(stack, logical)
        probes[f"{name}, other"] = ("app", str(other / "functions" / name),
                                    {**env, "PYTHONPATH": str(other / "layers" / "common")})
        probes[f"{name}, this"] = ("app", str(ROOT / "functions" / name), env)
    taken: dict[str, list[tuple[float, float]]] = {name: [] for name in probes}
    for round_ in range(samples + 1):
        for name, (module, path, env) in probes.items():
            wall, _, _, cpu = sample(module, path, env, as_in_lambda=True)
            if round_:  # the first round compiles bytecode: discarded
                taken[name].append((wall * 1000, cpu * 1000))

    def figures(name: str) -> dict[str, float]:
        wall, cpu = [v[0] for v in taken[name]], [v[1] for v in taken[name]]
        return {"wall_median_ms": statistics.median(wall), "wall_min_ms": min(wall),
                "cpu_median_ms": statistics.median(cpu), "cpu_min_ms": min(cpu)}

    base, rows = figures(LAMBDA_BASE), {}
    print(f"{'':22} {'wall med':>8} {'x':>5} {'min':>6} {'x':>5} {'CPU med':>8} {'x':>5}"
          f"   ({samples} samples, {other})")
    for name in probes:
        f = figures(name)
        rows[name] = {**{k: round(v, 1) for k, v in f.items()},
                      **{f"x_{k[:-3]}": round(v / base[k], 2) for k, v in f.items()}}
        print(f"{name:22} {f['wall_median_ms']:8.0f} {f['wall_median_ms'] / base['wall_median_ms']:5.2f} "
              f"{f['wall_min_ms']:6.0f} {f['wall_min_ms'] / base['wall_min_ms']:5.2f} "
              f"{f['cpu_median_ms']:8.0f} {f['cpu_median_ms'] / base['cpu_median_ms']:5.2f}")
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "coldstart_compare.json").write_text(json.dumps({"other": str(other), "samples": samples,
                                                                    "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
