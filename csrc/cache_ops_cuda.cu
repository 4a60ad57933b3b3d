// Paged KV cache ops, CUDA implementations of cache_ops.cpp (named apart: both would build cache_ops.o) (same layout, semantics and checks).
// Layout: cache [num_blocks, block_size, H, D]; slot = block * block_size + offset; slot -1 skips.
//
// Index tensors (slot_mapping, block_mapping) may live on the host or on the device:
//  - host: validated exactly like the CPU op, then copied to the device;
//  - device: validating them would cost a device->host sync on the decode hot path, so the kernels
//    instead skip anything out of range (never an out-of-bounds access), and copy_blocks checks its pairs for
//    races on the device (a device assert). ARGS_ENGINE_DEBUG_CHECKS=1 adds the host validation (with its sync).
// Only ATen and c10/cuda headers: both ship in the CPU torch wheel, so tests/test_cuda_build.py can
// compile this file on a machine without a GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <cstdlib>

#include "cache_ops_checks.h"

namespace args_engine {
namespace {

bool debug_checks() {
  const char* e = std::getenv("ARGS_ENGINE_DEBUG_CHECKS");
  return e != nullptr && e[0] == '1';
}

// One CUDA block per token; threads stride over its H*D elements. key/value may be strided.
template <typename scalar_t>
__global__ void store_kv_kernel(const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                                scalar_t* __restrict__ key_cache, scalar_t* __restrict__ value_cache,
                                const int64_t* __restrict__ slots, int64_t num_slots, int64_t head_dim,
                                int64_t slot_elems, int64_t ks0, int64_t ks1, int64_t ks2, int64_t vs0, int64_t vs1,
                                int64_t vs2) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slots[token];
  if (slot < 0 || slot >= num_slots) return;  // -1 is padding; anything else out of range is skipped
  scalar_t* kdst = key_cache + slot * slot_elems;
  scalar_t* vdst = value_cache + slot * slot_elems;
  for (int64_t e = threadIdx.x; e < slot_elems; e += blockDim.x) {
    const int64_t h = e / head_dim, d = e % head_dim;
    kdst[e] = key[token * ks0 + h * ks1 + d * ks2];
    vdst[e] = value[token * vs0 + h * vs1 + d * vs2];
  }
}

// grid.x: one pair per x; grid.y: chunks of the block. Copies raw words of type word_t. check_pairs (a device map,
// unchecked on the host): the pairs run in parallel, so a block one pair writes must be no other pair's source or
// destination (that would race); each CUDA block checks its own pair against all and stops the launch with a
// device assert if it is (the host check's rule, without its sync).
template <typename word_t>
__global__ void copy_blocks_kernel(word_t* __restrict__ key_cache, word_t* __restrict__ value_cache,
                                   const int64_t* __restrict__ pairs, int64_t num_blocks, int64_t block_words,
                                   bool check_pairs) {
  const int64_t src = pairs[2 * blockIdx.x], dst = pairs[2 * blockIdx.x + 1];
  if (src < 0 || src >= num_blocks || dst < 0 || dst >= num_blocks || src == dst) return;
  if (check_pairs) {
    __shared__ int conflict;
    if (threadIdx.x == 0) conflict = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < gridDim.x; j += blockDim.x)
      if (j != blockIdx.x && (pairs[2 * j] == dst || pairs[2 * j + 1] == dst)) conflict = 1;
    __syncthreads();
    CUDA_KERNEL_ASSERT(conflict == 0 && "copy_blocks: a destination block is another pair's source or destination; "
                       "pairs run in parallel on CUDA");
  }
  const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; e < block_words; e += step) {
    key_cache[dst * block_words + e] = key_cache[src * block_words + e];
    value_cache[dst * block_words + e] = value_cache[src * block_words + e];
  }
}

template <typename word_t>
void launch_copy_blocks(at::Tensor& key_cache, at::Tensor& value_cache, const at::Tensor& map, int64_t block_bytes,
                        bool check_pairs, cudaStream_t stream) {
  const int64_t words = block_bytes / static_cast<int64_t>(sizeof(word_t));
  const int threads = 256;
  const int64_t chunks = std::min<int64_t>((words + threads - 1) / threads, 64);
  const dim3 grid(static_cast<unsigned>(map.size(0)), static_cast<unsigned>(std::max<int64_t>(chunks, 1)));
  copy_blocks_kernel<word_t><<<grid, threads, 0, stream>>>(
      static_cast<word_t*>(key_cache.data_ptr()), static_cast<word_t*>(value_cache.data_ptr()),
      map.data_ptr<int64_t>(), key_cache.size(0), words, check_pairs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool aligned(const at::Tensor& t, int64_t bytes) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0; }

}  // namespace

void store_kv_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache, at::Tensor& value_cache,
                   const at::Tensor& slot_mapping) {
  CHECK_CUDA(key); CHECK_CUDA(value); CHECK_CUDA(key_cache); CHECK_CUDA(value_cache);
  CHECK_SAME_DEVICE(key, key_cache); CHECK_SAME_DEVICE(value, key_cache); CHECK_SAME_DEVICE(value_cache, key_cache);
  check_store_kv_inputs(key, value, key_cache, value_cache, slot_mapping);
  TORCH_CHECK(key_cache.scalar_type() == value_cache.scalar_type(),
              "store_kv: key_cache and value_cache must have the same dtype on CUDA");
  const int64_t num_slots = key_cache.size(0) * key_cache.size(1);
  at::Tensor slots = slot_mapping;
  if (!slot_mapping.is_cuda()) {
    check_slots_in_range(slot_mapping, num_slots);
    slots = slot_mapping.to(key_cache.device(), /*non_blocking=*/true);
  } else {
    CHECK_SAME_DEVICE(slot_mapping, key_cache);
    if (debug_checks()) check_slots_in_range(slot_mapping.cpu(), num_slots);
  }
  const int64_t n = key.size(0);
  const int64_t slot_elems = key.size(1) * key.size(2);
  if (n == 0 || slot_elems == 0) return;
  const c10::cuda::CUDAGuard guard(key_cache.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int threads = static_cast<int>(std::min<int64_t>(512, (slot_elems + 31) / 32 * 32));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, key.scalar_type(), "store_kv_cuda", [&] {
    store_kv_kernel<scalar_t><<<static_cast<unsigned>(n), threads, 0, stream>>>(
        key.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(), key_cache.data_ptr<scalar_t>(),
        value_cache.data_ptr<scalar_t>(), slots.data_ptr<int64_t>(), num_slots, key.size(2), slot_elems,
        key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void copy_blocks_cuda(at::Tensor& key_cache, at::Tensor& value_cache, const at::Tensor& block_mapping) {
  CHECK_CUDA(key_cache); CHECK_CUDA(value_cache); CHECK_SAME_DEVICE(value_cache, key_cache);
  CHECK_CONTIGUOUS(key_cache); CHECK_CONTIGUOUS(value_cache);
  check_copy_blocks_inputs(key_cache, value_cache, block_mapping);
  TORCH_CHECK(key_cache.scalar_type() == value_cache.scalar_type(),
              "copy_blocks: key_cache and value_cache must have the same dtype on CUDA");
  at::Tensor map = block_mapping.contiguous();
  const bool on_device = map.is_cuda();  // checked in the kernel (a host check would sync)
  if (!on_device) {
    check_block_pairs(map, key_cache.size(0), /*parallel=*/true);
    map = map.to(key_cache.device(), /*non_blocking=*/true);
  } else {
    CHECK_SAME_DEVICE(block_mapping, key_cache);
    if (debug_checks()) check_block_pairs(map.cpu(), key_cache.size(0), /*parallel=*/true);
  }
  const int64_t block_bytes = key_cache.numel() / std::max<int64_t>(key_cache.size(0), 1) * key_cache.element_size();
  if (map.size(0) == 0 || block_bytes == 0) return;
  const c10::cuda::CUDAGuard guard(key_cache.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Widest word that divides a block and both base addresses: dtype-agnostic, like the CPU copy.
  for (int64_t w : {16, 8, 4, 2}) {
    if (block_bytes % w || !aligned(key_cache, w) || !aligned(value_cache, w)) continue;
    if (w == 16) return launch_copy_blocks<uint4>(key_cache, value_cache, map, block_bytes, on_device, stream);
    if (w == 8) return launch_copy_blocks<uint2>(key_cache, value_cache, map, block_bytes, on_device, stream);
    if (w == 4) return launch_copy_blocks<uint32_t>(key_cache, value_cache, map, block_bytes, on_device, stream);
    return launch_copy_blocks<uint16_t>(key_cache, value_cache, map, block_bytes, on_device, stream);
  }
  launch_copy_blocks<uint8_t>(key_cache, value_cache, map, block_bytes, on_device, stream);
}

}  // namespace args_engine
