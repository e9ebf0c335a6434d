"""RAN-MedVLM: adversarial upstream noise in medical CLIP models and light-weight defences."""
