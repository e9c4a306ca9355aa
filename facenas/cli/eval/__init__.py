"""``facenas eval detections | fairness | compare | transfer``: evaluation of predictions, embeddings,
trainings and checkpoints."""
