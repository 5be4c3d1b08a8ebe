"""hf-personsearch: hybrid pre-training for person search, in the shape of a Hugging Face hub package."""

__version__ = "0.1.0"
