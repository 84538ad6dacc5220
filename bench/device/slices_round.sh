#!/bin/bash
# Eleventh session: the qkv projection and the FFN capped at 1024 tokens (commits d74ec1f, f4b55d2; measured,
# then reverted), the other ops in 2048- and 4096-token slices: the edge proof at 1024² (bf16 beside it at 2048).
source bench/device/autotune_carry.sh
edge_round slices 2048 w4a4_kv8,bf16 170
edge_round slices 4096 w4a4_kv8 120
autotune_save
