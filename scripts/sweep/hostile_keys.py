#!/usr/bin/env python3
"""A sweep of hostile configuration values: every key of the run
configuration gets values a careless or hostile user could write (huge,
negative, zero, NaN, infinite, of the wrong type, empty, absurdly long),
each in a file of its own, checked with `distill_openpangu --check`; then
the accepted ones of a chosen few run for real on the quick budget.

Each case is classed by how the process ended:
  refused   exit 2 and the message names the key (or the file and line)
  accepted  exit 0 (the value is valid)
  DEFECT    anything else: a panic (101), an abort (134), a kill, a hang,
            or an error that does not name the key

usage: scripts/sweep/hostile_keys.py target/debug/examples/distill_openpangu [--run]
"""
import os
import subprocess
import sys
import tempfile

BINARY = sys.argv[1]
RUN = "--run" in sys.argv

# (section, key, kind) for every key --print-config shows.
KEYS = {
    "model": {"teacher": "path", "student": "path", "device": "str", "dtype": "enum"},
    "data": {"prompts": "path", "max_prompt_tokens": "int", "eval_fraction": "frac", "seed": "int"},
    "rollout": {"refresh_every": "int", "max_lag": "int", "queue_capacity": "int",
                "batch_size": "int", "reuse": "int", "threads": "int", "schedule": "enum"},
    "sampling": {"temperature": "float", "top_k": "int", "top_p": "frac",
                 "max_new_tokens": "int", "seed": "int"},
    "filter": {"enabled": "bool", "convention": "enum", "form": "enum",
               "lower_percentile": "frac", "upper_percentile": "frac", "window": "int"},
    "pack": {"capacity": "int", "oversize": "enum", "baselines": "enum"},
    "train": {"steps": "int", "rows_per_step": "int", "micro_batch_rows": "int",
              "lr": "float", "min_lr": "float", "warmup_steps": "int", "weight_decay": "float",
              "beta1": "frac", "beta2": "frac", "grad_clip": "float", "loss": "enum",
              "ce_weight": "float", "top_k": "int", "jsd_beta": "frac", "skew_alpha": "frac",
              "target_temperature": "float", "teacher_fraction": "frac",
              "max_nonfinite_steps": "int", "threads": "int", "seed": "int"},
    "output": {"dir": "path", "checkpoint_every": "int"},
    "engine": {"kind": "enum", "student_url": "str", "teacher_url": "str", "python": "path",
               "student_cpus": "str", "teacher_cpus": "str", "kv_cache_gib": "int",
               "startup_timeout_s": "float", "concurrency": "int", "timeout_s": "float",
               "retries": "int", "probe_tolerance": "float", "publish_dir": "path"},
    "embedded": {"task": "enum", "min_ops": "int", "max_ops": "int", "student": "pair",
                 "warm_start": "enum", "warm_start_steps": "int", "plateau_max_steps": "int",
                 "plateau_every": "int", "plateau_patience": "int", "plateau_min_gain": "float",
                 "plateau_min_steps": "int", "warm_start_repair": "frac",
                 "teacher_target": "frac", "warm_start_max_ops": "int"},
}

VALUES = {
    "int": ["-1", "0", "9223372036854775807", "18446744073709551616", "1e300", "\"8\"", "1.5"],
    "float": ["-1.0", "0.0", "nan", "inf", "-inf", "1e300", "1e-300", "\"0.1\""],
    "frac": ["-0.1", "0.0", "1.0", "1.5", "nan", "1e-300", "\"0.5\""],
    "bool": ["1", "\"yes\""],
    "enum": ["\"\"", "\"nonsense\"", "3"],
    "str": ["\"\"", "\"" + "x" * 5000 + "\"", "\"http://[::1\"", "\"localhost:8000\"", "7"],
    "path": ["\"/nonexistent/x\"", "\"\"", "\"" + "a/" * 3000 + "\"", "5"],
    "pair": ["[0, 1]", "[16, 0]", "[131072, 1]", "[262144, 1]", "[64]", "[64, 2, 3]",
             "[-16, 1]", "[17, 1]"],
}

ENGINES = {"engine": ["--engine", "vllm"]}


def classify(section, key, value, proc):
    out = proc.stderr + proc.stdout
    if proc.returncode == 0:
        return "accepted"
    if proc.returncode == 2 and (f"{section}.{key}" in out or f"`{key}`" in out
                                  or key in out or "line " in out):
        return "refused"
    return "DEFECT"


def main():
    counts = {"refused": 0, "accepted": 0, "DEFECT": 0}
    accepted = []
    with tempfile.TemporaryDirectory() as tmp:
        for section, keys in KEYS.items():
            for key, kind in keys.items():
                for value in VALUES[kind]:
                    path = os.path.join(tmp, "case.toml")
                    with open(path, "w") as f:
                        f.write(f"[{section}]\n{key} = {value}\n")
                    cmd = [BINARY, "--check", "--quick", "--config", path]
                    cmd += ENGINES.get(section, [])
                    try:
                        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                              env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
                        verdict = classify(section, key, value, proc)
                        detail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
                    except subprocess.TimeoutExpired:
                        verdict, detail = "DEFECT", "hung in --check"
                    counts[verdict] += 1
                    if verdict == "accepted":
                        accepted.append((section, key, value))
                    if verdict != "refused":
                        print(f"{verdict:8} {section}.{key} = {value[:40]}: {detail}")
    print(f"--check: {sum(counts.values())} cases: {counts}")
    if RUN:
        run_accepted(accepted)


def run_accepted(accepted):
    """The accepted values of sizes and numbers run for real (quick, SFT and
    NPD, 2 steps): they must finish or fail with a named error."""
    counts = {"finished": 0, "refused": 0, "DEFECT": 0}
    cache = tempfile.mkdtemp(prefix="npd-sweep-cache-")
    for section, key, value in accepted:
        if section in ("engine", "model", "output") or key in ("dir",):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "case.toml")
            with open(path, "w") as f:
                f.write(f"[{section}]\n{key} = {value}\n")
            cmd = [BINARY, "--quick", "--methods", "sft,npd", "--steps", "2", "--config", path,
                   "--out", os.path.join(tmp, "out"), "--cache", cache]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                code = proc.returncode
                last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
                verdict = ("finished" if code == 0 else
                           "refused" if code == 2 and "panicked" not in proc.stderr else "DEFECT")
            except subprocess.TimeoutExpired:
                verdict, last = "DEFECT", "ran past 300 s"
            counts[verdict] += 1
            if verdict != "finished":
                print(f"run {verdict:8} {section}.{key} = {value[:40]}: {last}")
    print(f"runs: {sum(counts.values())} cases: {counts}")


if __name__ == "__main__":
    main()
