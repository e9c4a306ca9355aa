"""Toy LightningModules and DataModules that exercise the training and search plumbing in
seconds (Lightning's ``demos`` convention): shared by the tests and the benchmarks."""
