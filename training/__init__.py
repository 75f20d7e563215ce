"""SimCLR pretraining, fine-tuning and evaluation, and the artifact layout they write."""
