"""Feature de-drifters: modules inserted into a frozen task model (AFD, degradation prior, fine-tuned stems)."""
