"""Scale-out on Ray (the `ray` extra): replicated OpenAI serving on Ray Serve with prefix-affinity routing
(`args_engine.ray.serving`: `application`, `build_app`, `serve_on_ray`), and ARGS over datasets on Ray Data
(`generate_dataset`, `generate_prompts`, `generate_to_dir`)."""
from .batch import RayBatchOptions, generate_dataset, generate_prompts, generate_to_dir

__all__ = ["RayBatchOptions", "generate_dataset", "generate_prompts", "generate_to_dir"]
