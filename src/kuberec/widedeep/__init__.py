"""Wide & deep purchase recommender: model, Horovod training, evaluation against baselines, pyfunc."""
