"""Image similarity: a TF Similarity metric-learning model, its Horovod training, retrieval evaluation, index
and pyfunc."""
