// The one registration file: every op of args_engine._C, as torch.ops.args_engine.*.
#include <torch/extension.h>

namespace args_engine {
void store_kv(const torch::Tensor& key, const torch::Tensor& value, torch::Tensor& key_cache,
              torch::Tensor& value_cache, const torch::Tensor& slot_mapping);
void copy_blocks(torch::Tensor& key_cache, torch::Tensor& value_cache, const torch::Tensor& block_mapping);
}  // namespace args_engine

TORCH_LIBRARY(args_engine, m) {
  m.def("store_kv(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor slot_mapping) -> ()");
  m.def("copy_blocks(Tensor(a!) key_cache, Tensor(b!) value_cache, Tensor block_mapping) -> ()");
}

TORCH_LIBRARY_IMPL(args_engine, CPU, m) {
  m.impl("store_kv", &args_engine::store_kv);
  m.impl("copy_blocks", &args_engine::copy_blocks);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "args-engine C++ ops (registered as torch.ops.args_engine)"; }
