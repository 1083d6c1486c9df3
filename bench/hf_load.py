#!/usr/bin/env python3
"""transformers' load of a checkpoint folder onto the GPU, for checkpoint_load_bench's table
(issue 17: specd's load against a plain read and against transformers, in the same run).

    python3 bench/hf_load.py DIR [REPEAT]
Prints the median seconds of AutoModelForCausalLM.from_pretrained(DIR, dtype=bfloat16,
device_map="cuda"), synchronized, over REPEAT runs (default 3).
"""
import statistics
import sys
import time

import torch
import transformers


def main():
    d = sys.argv[1]
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        m = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="cuda")
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del m
        torch.cuda.empty_cache()
    print(f"transformers from_pretrained {statistics.median(times):.3f} s (median of {repeat})")


if __name__ == "__main__":
    main()
