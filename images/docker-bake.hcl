# `make images`: docker buildx bake -f images/docker-bake.hcl, from the repository root.
# Every image is tagged <REGISTRY>/kuberec-<kind>:<TAG>, the names Settings.image(kind) gives the backend.
variable "REGISTRY" {
  default = "kuberec"
}
variable "TAG" {
  default = "0.1.0"
}

group "default" {
  targets = ["runtime", "horovod-cpu", "horovod-gpu", "spark", "serving", "mlflow"]
}

target "_common" {
  context   = "."
  platforms = ["linux/amd64"]
  labels = {
    "org.opencontainers.image.version" = "${TAG}"
    "org.opencontainers.image.source"  = "kuberec"
  }
}

target "runtime" {
  inherits   = ["_common"]
  dockerfile = "images/runtime/Dockerfile"
  tags       = ["${REGISTRY}/kuberec-runtime:${TAG}"]
}

# The pinned stack without the project: what Horovod is compiled against.
target "runtime-deps" {
  inherits   = ["_common"]
  dockerfile = "images/runtime/Dockerfile"
  target     = "deps"
}

# The images FROM `runtime` get the runtime target as that named context.
target "_on_runtime" {
  inherits = ["_common"]
  contexts = {
    runtime = "target:runtime"
  }
}

target "horovod-cpu" {
  inherits   = ["_on_runtime"]
  contexts = {
    runtime      = "target:runtime"
    runtime-deps = "target:runtime-deps"
  }
  dockerfile = "images/horovod-cpu/Dockerfile"
  tags       = ["${REGISTRY}/kuberec-horovod-cpu:${TAG}"]
}

target "horovod-gpu" {
  inherits   = ["_common"]
  dockerfile = "images/horovod-gpu/Dockerfile"
  tags       = ["${REGISTRY}/kuberec-horovod-gpu:${TAG}"]
}

target "spark" {
  inherits   = ["_on_runtime"]
  dockerfile = "images/spark/Dockerfile"
  tags       = ["${REGISTRY}/kuberec-spark:${TAG}"]
}

# Built on Python alone, with what their role needs (their requirements.txt), not on the runtime.
target "serving" {
  inherits   = ["_common"]
  dockerfile = "images/serving/Dockerfile"
  tags       = ["${REGISTRY}/kuberec-serving:${TAG}"]
}

target "mlflow" {
  inherits   = ["_common"]
  dockerfile = "images/mlflow/Dockerfile"
  tags       = ["${REGISTRY}/kuberec-mlflow:${TAG}"]
}
