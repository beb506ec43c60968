"""Remote-code templates for Hugging Face exports (copied by ``cramming.export.remote``; import transformers)."""
