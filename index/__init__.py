"""Embedding image sets with a SimCLR encoder and searching them with FAISS."""
