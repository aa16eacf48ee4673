"""Converters from other projects' weight formats (Hugging Face, official detectron2 files)."""
