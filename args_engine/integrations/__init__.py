"""Drop-in backends: Hugging Face `generate` (integrations.hf) and an OpenAI-compatible server (integrations.server)."""
