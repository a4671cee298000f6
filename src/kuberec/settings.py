"""One place that resolves where kuberec keeps things and how it runs.

Precedence (highest first): explicit keyword arguments, environment variables, the YAML config file
(`KUBEREC_CONFIG`, default `<home>/config.yaml`), built-in defaults. Every value is plain data so a KFP component or
a Kubernetes pod can be handed the same settings through its environment (`Settings.to_env`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from kuberec import __version__
from kuberec.errors import KuberecError

Backend = Literal["local", "kubernetes"]
BACKENDS: tuple[str, ...] = ("local", "kubernetes")

# Environment variable for each field; MLflow's own variable is honoured so existing setups keep working.
ENV_VARS: dict[str, str] = {
    "home": "KUBEREC_HOME",
    "lake_uri": "KUBEREC_LAKE",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "backend": "KUBEREC_BACKEND",
    "namespace": "KUBEREC_NAMESPACE",
    "image_registry": "KUBEREC_IMAGE_REGISTRY",
    "image_tag": "KUBEREC_IMAGE_TAG",
    "cache_dir": "KUBEREC_CACHE",
    "spark_master": "KUBEREC_SPARK_MASTER",
    "s3_endpoint": "KUBEREC_S3_ENDPOINT",
    "mlflow_host": "KUBEREC_MLFLOW_HOST",
    "mlflow_ui_url": "KUBEREC_MLFLOW_UI_URL",
    "kfp_ui_url": "KUBEREC_KFP_UI_URL",
    "kfp_run_id": "KUBEREC_KFP_RUN_ID",
    "kfp_run_name": "KUBEREC_KFP_RUN_NAME",
}


class SettingsError(KuberecError):
    """A setting has a value kuberec cannot use."""


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(".kuberec"))
    lake_uri: str = ""  # default: <home>/lake
    cache_dir: Path | None = None  # default: <home>/cache (downloads, built wheels, Delta jars)
    mlflow_tracking_uri: str = ""  # default: the embedded server kuberec starts under <home>/mlflow
    backend: Backend = "local"
    namespace: str = "kuberec"
    image_registry: str = "kuberec"
    image_tag: str = __version__
    spark_master: str = "local[*]"
    s3_endpoint: str = ""  # MinIO/S3 endpoint for s3:// lakes
    mlflow_host: str = ""  # where the embedded MLflow server listens; default: loopback only (LOOPBACK)
    # Where a browser reaches the MLflow and Kubeflow Pipelines UIs (links between them; MLflow's default: the
    # tracking URI when it is http(s)), and the Kubeflow Pipelines run a pipeline step belongs to (its MLflow tags).
    mlflow_ui_url: str = ""
    kfp_ui_url: str = ""
    kfp_run_id: str = ""
    kfp_run_name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().absolute())
        cache = Path(self.cache_dir).expanduser().absolute() if self.cache_dir else self.home / "cache"
        object.__setattr__(self, "cache_dir", cache)
        if not self.lake_uri:
            object.__setattr__(self, "lake_uri", str(self.home / "lake"))
        if self.backend not in BACKENDS:
            raise SettingsError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r} "
                                f"(set {ENV_VARS['backend']})")
        for name in ("lake_uri", "s3_endpoint"):  # they travel in plain pod specs, logs and MLflow tags
            if has_credentials(getattr(self, name)):
                raise SettingsError(f"{ENV_VARS[name]}={redact_uri(getattr(self, name))!r} carries credentials: "
                                    f"remove them and give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                    f"(in a cluster, the kuberec-lake Secret)")
        scheme = self.lake_uri.split("://", 1)[0] if "://" in self.lake_uri else "file"
        if scheme not in ("file", "s3", "s3a"):
            raise SettingsError(f"lake URI {self.lake_uri!r}: only local paths and s3:// are supported")

    # -- derived locations ---------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        """Raw downloaded/verified source files (Fashion-MNIST IDX, Instacart CSVs)."""
        return self.home / "data"

    @property
    def jars_dir(self) -> Path:
        return self.cache_dir / "jars"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def lake_is_local(self) -> bool:
        return "://" not in self.lake_uri or self.lake_uri.startswith("file://")

    def table_uri(self, name: str) -> str:
        """Location of a Delta table in the lake, e.g. `table_uri("fashion_mnist")`."""
        if not name or ".." in name.split("/"):
            raise SettingsError(f"bad table name {name!r}")
        base = self.lake_uri.removeprefix("file://").rstrip("/")
        if base.startswith("s3://"):  # Spark's Hadoop filesystem for S3 is s3a
            base = "s3a://" + base.removeprefix("s3://")
        return f"{base}/{name}"

    def image(self, kind: str) -> str:
        """Container image of one of kuberec's images (runtime, horovod-cpu, horovod-gpu, spark, serving)."""
        return f"{self.image_registry}/kuberec-{kind}:{self.image_tag}"

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in another process or pod."""
        env = {}
        for name, var in ENV_VARS.items():
            value = getattr(self, name)
            if value not in ("", None):
                env[var] = str(value)
        return env


def load_settings(**overrides: Any) -> Settings:
    """Resolve settings from overrides > environment > config file > defaults."""
    env: Mapping[str, str] = os.environ
    home = Path(overrides.get("home") or env.get(ENV_VARS["home"]) or ".kuberec")
    config_path = Path(env.get("KUBEREC_CONFIG") or home / "config.yaml")
    values: dict[str, Any] = {}
    if config_path.exists():
        loaded = yaml.safe_load(config_path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise SettingsError(f"{config_path}: expected a mapping of setting names to values")
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise SettingsError(f"{config_path}: unknown settings {unknown}; known: {sorted(known)}")
        values.update(loaded)
    for name, var in ENV_VARS.items():
        if env.get(var):
            values[name] = env[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["home"] = home if "home" not in overrides else overrides["home"]
    return Settings(**values)


# Where kuberec's own servers (MLflow, the model server, the demo page) listen unless told otherwise.
LOOPBACK = "127.0.0.1"


def exposure_warning(host: str, server: str) -> str | None:
    """The warning to give when `server` is asked to listen on `host` beyond loopback (None on loopback):
    kuberec's local servers have no authentication, so anyone who can reach that address can use them."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback:
        return None
    return (f"{server} listens on {host}, not only on {LOOPBACK}: it has no authentication, so anyone who can "
            f"reach this machine at that address can use it")


def redact_uri(uri: str) -> str:
    """`uri` with its user name and password (`scheme://user:password@host/...`) shown as `***`: the form of a
    URI for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def has_credentials(uri: str) -> bool:
    """True when `uri` carries a user name or password."""
    return redact_uri(uri) != uri
