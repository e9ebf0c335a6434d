"""Training loops: contrastive CLIP training, feature extraction and head fitting."""
