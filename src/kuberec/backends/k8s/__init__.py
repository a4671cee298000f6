"""What kuberec's custom resources look like: each job type's kind, the resource a job becomes, how to read its status.

SparkJob -> SparkApplication (spark-operator), HorovodJob -> MPIJob (mpi-operator), RayJob -> RayJob (KubeRay),
ServingJob -> InferenceService (KServe). The containers run the same `python -m <module> <args>` as the local
backend, with the settings passed as environment variables and credentials from Secrets.

A resource is a plain dict built from the job, the `Settings` and the `ClusterOptions` alone: nothing here talks to
a cluster, so `kuberec k8s render` and its tests need no API server. `kuberec.backends.kubernetes` creates the
resources and follows them.

- `options`: `ClusterOptions` (the KUBEREC_K8S_* variables) and `ClusterConfigError`.
- `kinds`: the four kinds and how to read each one's status as a `Progress`.
- `naming`: resource names and labels.
- `pods`: what every pod gets: environment, security contexts, writable volumes, resources, GPU placement.
- `render`: the SparkApplication, MPIJob and RayJob a job becomes, and `render` for any job.
- `serving`: the InferenceService a served model becomes, and how its pods are told apart.
"""
