"""Stage 1, embed and score: feature embedding (bins), texture level (representativeness), view vectors (diversity)."""
