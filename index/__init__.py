"""FAISS indexes over embeddings, and the `index` stage that builds one for a run (embeddings: `core.models.embed`)."""
