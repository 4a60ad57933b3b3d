#pragma once
// Input validation shared by the CPU (cache_ops.cpp) and CUDA (cache_ops_cuda.cu) cache ops, so both
// reject the same inputs with the same messages.
#include <algorithm>
#include <vector>

#include "checks.h"

namespace args_engine {

inline void check_store_kv_inputs(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                                  const at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  CHECK_CONTIGUOUS(key_cache); CHECK_CONTIGUOUS(value_cache); CHECK_CONTIGUOUS(slot_mapping);
  TORCH_CHECK(key.dim() == 3 && value.sizes() == key.sizes(), "store_kv: key/value must be [N, H, D] and equal, got ",
              key.sizes(), " and ", value.sizes());
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.sizes() == key_cache.sizes(),
              "store_kv: caches must be [num_blocks, block_size, H, D] and equal");
  TORCH_CHECK(key_cache.size(2) == key.size(1) && key_cache.size(3) == key.size(2),
              "store_kv: cache heads/head_dim ", key_cache.sizes(), " do not match key ", key.sizes());
  TORCH_CHECK(key.scalar_type() == key_cache.scalar_type() && value.scalar_type() == value_cache.scalar_type(),
              "store_kv: key/value dtype must equal the cache dtype");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.dim() == 1 &&
              slot_mapping.size(0) == key.size(0), "store_kv: slot_mapping must be int64 [N]");
}

// slots: a CPU int64 [N] tensor.
inline void check_slots_in_range(const at::Tensor& slots, int64_t num_slots) {
  const auto* s = slots.data_ptr<int64_t>();
  for (int64_t i = 0; i < slots.numel(); ++i)
    TORCH_CHECK(s[i] >= -1 && s[i] < num_slots, "store_kv: slot ", s[i], " out of range [-1, ", num_slots, ")");
}

inline void check_copy_blocks_inputs(const at::Tensor& key_cache, const at::Tensor& value_cache,
                                     const at::Tensor& block_mapping) {
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.sizes() == key_cache.sizes(),
              "copy_blocks: caches must be [num_blocks, block_size, H, D] and equal");
  TORCH_CHECK(block_mapping.scalar_type() == at::kLong && block_mapping.dim() == 2 &&
              block_mapping.size(1) == 2, "copy_blocks: block_mapping must be int64 [M, 2] (src, dst)");
}

// map: a contiguous CPU int64 [M, 2] tensor. parallel: the pairs run concurrently (CUDA), so a
// block that is written must not be read or written by another pair (the CPU op runs them in order).
inline void check_block_pairs(const at::Tensor& map, int64_t num_blocks, bool parallel) {
  const auto* pairs = map.data_ptr<int64_t>();
  const int64_t m = map.size(0);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t src = pairs[2 * i], dst = pairs[2 * i + 1];
    TORCH_CHECK(src >= 0 && src < num_blocks && dst >= 0 && dst < num_blocks, "copy_blocks: block pair (", src, ", ",
                dst, ") out of range [0, ", num_blocks, ")");
  }
  if (!parallel) return;
  std::vector<int64_t> dsts(m), srcs(m);
  for (int64_t i = 0; i < m; ++i) srcs[i] = pairs[2 * i], dsts[i] = pairs[2 * i + 1];
  std::sort(dsts.begin(), dsts.end());
  std::sort(srcs.begin(), srcs.end());
  auto dup = std::adjacent_find(dsts.begin(), dsts.end());
  TORCH_CHECK(dup == dsts.end(), "copy_blocks: block ", dup == dsts.end() ? 0 : *dup,
              " is a destination twice; pairs run in parallel on CUDA");
  for (int64_t i = 0; i < m; ++i) {
    const int64_t src = pairs[2 * i], dst = pairs[2 * i + 1];
    TORCH_CHECK(src == dst || !std::binary_search(srcs.begin(), srcs.end(), dst), "copy_blocks: block ", dst,
                " is both a destination and a source; pairs run in parallel on CUDA");
  }
}

}  // namespace args_engine
