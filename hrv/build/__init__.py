"""Building HRVs for a checkpoint: concept-word embeddings, head votes, the prompt loop (shards, resume,
merge, Ray) and the `build`/`merge` commands."""
