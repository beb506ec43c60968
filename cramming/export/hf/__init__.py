"""Remote-code templates for Hugging Face exports (copied by ``cramming.export_hf``; import transformers)."""
