// The one registration file: every op of args_engine._C, as torch.ops.args_engine.*, and the
// BlockAllocator class (pybind11, args_engine._C.BlockAllocator).
#include <pybind11/stl.h>
#include <torch/extension.h>

#include "block_allocator.h"

namespace args_engine {
void store_kv(const torch::Tensor& key, const torch::Tensor& value, torch::Tensor& key_cache,
              torch::Tensor& value_cache, const torch::Tensor& slot_mapping);
void copy_blocks(torch::Tensor& key_cache, torch::Tensor& value_cache, const torch::Tensor& block_mapping);
#ifdef ARGS_ENGINE_CUDA
void store_kv_cuda(const torch::Tensor& key, const torch::Tensor& value, torch::Tensor& key_cache,
                   torch::Tensor& value_cache, const torch::Tensor& slot_mapping);
void copy_blocks_cuda(torch::Tensor& key_cache, torch::Tensor& value_cache, const torch::Tensor& block_mapping);
#endif
}  // namespace args_engine

TORCH_LIBRARY(args_engine, m) {
  m.def("store_kv(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor slot_mapping) -> ()");
  m.def("copy_blocks(Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor block_mapping) -> ()");
}

TORCH_LIBRARY_IMPL(args_engine, CPU, m) {
  m.impl("store_kv", &args_engine::store_kv);
  m.impl("copy_blocks", &args_engine::copy_blocks);
}

#ifdef ARGS_ENGINE_CUDA
TORCH_LIBRARY_IMPL(args_engine, CUDA, m) {
  m.impl("store_kv", &args_engine::store_kv_cuda);
  m.impl("copy_blocks", &args_engine::copy_blocks_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using args_engine::BlockAllocator;
  m.doc() = "args-engine C++ ops (registered as torch.ops.args_engine) and the paged KV-cache BlockAllocator";
  m.attr("cuda_ops") = py::bool_(
#ifdef ARGS_ENGINE_CUDA
      true
#else
      false
#endif
  );
  // A KeyError subclass, so `except KeyError` works for unknown sequence ids.
  py::register_exception<args_engine::SequenceNotFound>(m, "SequenceNotFound", PyExc_KeyError);

  py::class_<BlockAllocator>(m, "BlockAllocator",
                             "Paged KV-cache block allocator: block tables, ref counts, copy-on-write, prefix "
                             "caching. One block id indexes both the LM and the RM cache. Free list is FIFO.")
      .def(py::init<int64_t, int64_t, bool>(), py::arg("num_blocks"), py::arg("block_size"),
           py::arg("enable_prefix_caching") = true)
      .def_property_readonly("num_blocks", &BlockAllocator::num_blocks)
      .def_property_readonly("block_size", &BlockAllocator::block_size)
      .def_property_readonly("num_free_blocks", &BlockAllocator::num_free_blocks)
      .def_property_readonly("num_sequences", &BlockAllocator::num_sequences)
      .def("blocks_needed", &BlockAllocator::blocks_needed, py::arg("num_positions"))
      .def("can_allocate", &BlockAllocator::can_allocate, py::arg("num_positions"))
      .def("allocate", &BlockAllocator::allocate, py::arg("seq_id"), py::arg("token_ids"), py::arg("num_positions"),
           py::arg("reuse_prefix") = true,
           "Create seq_id's block table; returns how many leading tokens are already cached (none when "
           "reuse_prefix is false: every position is computed, and its full blocks are still registered).")
      .def("can_ensure", &BlockAllocator::can_ensure, py::arg("seq_id"), py::arg("num_positions"))
      .def("ensure", &BlockAllocator::ensure, py::arg("seq_id"), py::arg("num_positions"),
           "Grow the table to num_positions; returns (src, dst) copy-on-write pairs for copy_blocks.")
      .def("append_tokens", &BlockAllocator::append_tokens, py::arg("seq_id"), py::arg("token_ids"))
      .def("mark_computed", &BlockAllocator::mark_computed, py::arg("seq_id"), py::arg("num_computed"),
           "K/V of positions [0, num_computed) is written: those full blocks become prefix-cache entries.")
      .def("unmark_computed", &BlockAllocator::unmark_computed, py::arg("seq_id"), py::arg("num_computed"),
           "Take back marks past num_computed (a failed step): seq_id's own entries there leave the prefix cache.")
      .def("num_computed", &BlockAllocator::num_computed, py::arg("seq_id"))
      .def("reset_prefix_cache", &BlockAllocator::reset_prefix_cache,
           "Forget every prefix-cache entry (blocks and tables stay as they are).")
      .def("fork", &BlockAllocator::fork, py::arg("parent_id"), py::arg("child_id"))
      .def("free", &BlockAllocator::free, py::arg("seq_id"))
      .def("num_tokens", &BlockAllocator::num_tokens, py::arg("seq_id"))
      .def("block_table", &BlockAllocator::block_table, py::arg("seq_id"))
      .def("slot", &BlockAllocator::slot, py::arg("seq_id"), py::arg("position"))
      .def("ref_count", &BlockAllocator::ref_count, py::arg("block_id"))
      .def("has_sequence", &BlockAllocator::has_sequence, py::arg("seq_id"))
      .def("block_tables", &BlockAllocator::block_tables, py::arg("seq_ids"), py::arg("width") = 0,
           "int32 [B, max(width, longest table)], padded with 0.")
      .def("slots", &BlockAllocator::slots, py::arg("seq_ids"), py::arg("positions"), "int64 [B] slot mapping.")
      .def("check", &BlockAllocator::check, "Raise RuntimeError naming the first broken invariant.");
}
