"""Training harness shared by the models: `worker` runs inside each Horovod process (start Horovod, agree on rank 0's
values, checkpoint each epoch, compare weights); `launch` runs in the step that starts the job (the MLflow run it
trains in, resumed after a failure, and the job itself through the backend)."""
