// Paged KV cache ops, CPU implementations. Layout: cache [num_blocks, block_size, num_heads, head_dim];
// a slot is block * block_size + offset; slot -1 means "skip" (padding).
#include <torch/extension.h>

#include "checks.h"

namespace args_engine {

void store_kv(const torch::Tensor& key, const torch::Tensor& value, torch::Tensor& key_cache,
              torch::Tensor& value_cache, const torch::Tensor& slot_mapping) {
  CHECK_CPU(key); CHECK_CPU(value); CHECK_CPU(key_cache); CHECK_CPU(value_cache); CHECK_CPU(slot_mapping);
  CHECK_CONTIGUOUS(key_cache); CHECK_CONTIGUOUS(value_cache); CHECK_CONTIGUOUS(slot_mapping);
  TORCH_CHECK(key.dim() == 3 && value.sizes() == key.sizes(), "store_kv: key/value must be [N, H, D] and equal, got ",
              key.sizes(), " and ", value.sizes());
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.sizes() == key_cache.sizes(),
              "store_kv: caches must be [num_blocks, block_size, H, D] and equal");
  TORCH_CHECK(key_cache.size(2) == key.size(1) && key_cache.size(3) == key.size(2),
              "store_kv: cache heads/head_dim ", key_cache.sizes(), " do not match key ", key.sizes());
  TORCH_CHECK(key.scalar_type() == key_cache.scalar_type() && value.scalar_type() == value_cache.scalar_type(),
              "store_kv: key/value dtype must equal the cache dtype");
  TORCH_CHECK(slot_mapping.scalar_type() == torch::kLong && slot_mapping.dim() == 1 &&
              slot_mapping.size(0) == key.size(0), "store_kv: slot_mapping must be int64 [N]");
  const int64_t num_slots = key_cache.size(0) * key_cache.size(1);
  const auto* slots = slot_mapping.data_ptr<int64_t>();
  for (int64_t i = 0; i < slot_mapping.size(0); ++i)
    TORCH_CHECK(slots[i] >= -1 && slots[i] < num_slots, "store_kv: slot ", slots[i], " out of range [-1, ",
                num_slots, ")");
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
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.sizes() == key_cache.sizes(),
              "copy_blocks: caches must be [num_blocks, block_size, H, D] and equal");
  TORCH_CHECK(block_mapping.scalar_type() == torch::kLong && block_mapping.dim() == 2 &&
              block_mapping.size(1) == 2, "copy_blocks: block_mapping must be int64 [M, 2] (src, dst)");
  auto map = block_mapping.contiguous();
  const auto* pairs = map.data_ptr<int64_t>();
  const int64_t n = key_cache.size(0);
  for (int64_t i = 0; i < map.size(0); ++i) {
    const int64_t src = pairs[2 * i], dst = pairs[2 * i + 1];
    TORCH_CHECK(src >= 0 && src < n && dst >= 0 && dst < n, "copy_blocks: block pair (", src, ", ", dst,
                ") out of range [0, ", n, ")");
    key_cache[dst].copy_(key_cache[src]);
    value_cache[dst].copy_(value_cache[src]);
  }
}

}  // namespace args_engine
