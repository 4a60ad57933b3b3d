// Paged KV cache ops, CPU implementations. Layout: cache [num_blocks, block_size, num_heads, head_dim];
// a slot is block * block_size + offset; slot -1 means "skip" (padding). CUDA versions: cache_ops_cuda.cu.
#include <torch/extension.h>

#include "cache_ops_checks.h"

namespace args_engine {

void store_kv(const torch::Tensor& key, const torch::Tensor& value, torch::Tensor& key_cache,
              torch::Tensor& value_cache, const torch::Tensor& slot_mapping) {
  CHECK_CPU(key); CHECK_CPU(value); CHECK_CPU(key_cache); CHECK_CPU(value_cache); CHECK_CPU(slot_mapping);
  check_store_kv_inputs(key, value, key_cache, value_cache, slot_mapping);
  const int64_t num_slots = key_cache.size(0) * key_cache.size(1);
  check_slots_in_range(slot_mapping, num_slots);  // all of them first: a bad slot writes nothing
  const auto* slots = slot_mapping.data_ptr<int64_t>();
  auto kc = key_cache.view({num_slots, key.size(1), key.size(2)});
  auto vc = value_cache.view({num_slots, key.size(1), key.size(2)});
  for (int64_t i = 0; i < slot_mapping.size(0); ++i) {
    if (slots[i] < 0) continue;
    kc[slots[i]].copy_(key[i]);
    vc[slots[i]].copy_(value[i]);
  }
}

void copy_blocks(torch::Tensor& key_cache, torch::Tensor& value_cache, const torch::Tensor& block_mapping) {
  CHECK_CPU(key_cache); CHECK_CPU(value_cache); CHECK_CPU(block_mapping);
  check_copy_blocks_inputs(key_cache, value_cache, block_mapping);
  auto map = block_mapping.contiguous();
  check_block_pairs(map, key_cache.size(0), /*parallel=*/false);  // all pairs first: a bad pair copies nothing
  const auto* pairs = map.data_ptr<int64_t>();
  for (int64_t i = 0; i < map.size(0); ++i) {  // in order: a later pair may read an earlier pair's dst
    key_cache[pairs[2 * i + 1]].copy_(key_cache[pairs[2 * i]]);
    value_cache[pairs[2 * i + 1]].copy_(value_cache[pairs[2 * i]]);
  }
}

}  // namespace args_engine
