"""One training step of transformers' LlamaForCausalLM(attention_bias=True),
eager attention, cross-entropy on all but the first quarter of each row,
AdamW: the Python side of examples/model_bench.rs.

usage: train_step.py CONFIG_JSON BATCH LEN THREADS REPS
prints: seconds_per_step S
"""

import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

cfg, batch, length, threads, reps = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
c = json.loads(cfg)
config = LlamaConfig(
    vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
    intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
    num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
    attention_bias=True, tie_word_embeddings=True, rms_norm_eps=c["rms_norm_eps"],
    max_position_embeddings=c["max_position_embeddings"], attn_implementation="eager",
)
torch.manual_seed(0)
model = LlamaForCausalLM(config).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
ids = torch.randint(3, 4000, (batch, length))
labels = ids.clone()
labels[:, : length // 4] = -100


def step():
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()


step()
times = []
for _ in range(reps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
times.sort()
print("seconds_per_step", times[len(times) // 2])
