"""What a pipeline step shows a person on its run page (the KFP UI's Markdown and HTML visualizations): a metric
table, a picture, a champion decision with links to MLflow. Plain text in, text out; the KFP components write it
into their output artifacts."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Mapping, Protocol

from kuberec import tracking
from kuberec.champion import ChampionDecision
from kuberec.settings import Settings


def metric_table_html(columns: Mapping[str, Mapping[str, float]]) -> str:
    """One row per metric, one column per model (the first column's metrics set the rows)."""
    names = list(columns)
    metrics = list(next(iter(columns.values()), {}))
    head = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    rows = "".join(
        f"<tr><td>{html.escape(metric)}</td>"
        + "".join(f"<td>{columns[name][metric]:.4f}</td>" if metric in columns[name] else "<td></td>"
                  for name in names) + "</tr>"
        for metric in metrics)
    return (f'<table border="1" cellpadding="4" style="border-collapse:collapse"><tr><th>metric</th>{head}</tr>'
            f"{rows}</table>")


def png_html(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


def markdown_text(text: str) -> str:
    """`text` shown as it is in Markdown (metric names' underscores are not emphasis)."""
    return "".join(f"\\{char}" if char in "\\`*_[]<>#|" else char for char in text)


def link_markdown(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else text


class Registered(Protocol):
    """What both models' register steps return (kuberec.<model>.pyfunc.Registered*Model)."""

    name: str
    version: int
    run_id: str
    champion: bool
    decision: ChampionDecision | None

    @property
    def model_uri(self) -> str: ...


def write_registration(settings: Settings, registered: Registered, model_path: str, report_path: str) -> dict[str, Any]:
    """A register step's KFP outputs: the registered version as a Model artifact's file (JSON) and metadata
    (returned), and the champion decision with its MLflow links as Markdown at `report_path`."""
    version_url = tracking.model_version_url(settings, registered.name, registered.version)
    metadata = {"registered_model": registered.name, "version": registered.version,
                "mlflow_model_uri": registered.model_uri, "champion": registered.champion,
                "mlflow_run_id": registered.run_id,
                "mlflow_run_url": tracking.run_url(settings, registered.run_id) or "",
                "mlflow_model_version_url": version_url or "",
                "champion_decision": registered.decision.reason if registered.decision else ""}
    Path(model_path).write_text(json.dumps(metadata, indent=2))
    Path(report_path).write_text(registration_markdown(settings, name=registered.name, version=registered.version,
                                                       run_id=registered.run_id, decision=registered.decision))
    return metadata


def write_nothing_registered(name: str, reason: str, model_path: str, report_path: str) -> dict[str, Any]:
    """A register step's KFP outputs when it registered nothing (a refresh that found nothing new)."""
    metadata = {"registered_model": name, "version": 0, "mlflow_model_uri": "", "champion": False,
                "champion_decision": reason}
    Path(model_path).write_text(json.dumps(metadata, indent=2))
    Path(report_path).write_text(f"## {markdown_text(name)}: nothing registered\n\n{markdown_text(reason)}\n")
    return metadata


def registration_markdown(settings: Settings, *, name: str, version: int, run_id: str,
                          decision: ChampionDecision) -> str:
    """A registered version, the champion gate's decision and where both live in MLflow."""
    verdict = "is now **champion**" if decision.promote else "is **not** champion"
    scores = [("policy", decision.policy), ("metric", markdown_text(decision.metric))]
    if decision.challenger is not None:
        scores.append(("challenger (this version)", f"{decision.challenger:.4f}"))
    if decision.champion is not None:
        scores.append((f"champion (version {decision.champion_version}, re-scored)", f"{decision.champion:.4f}"))
    elif decision.champion_version is not None:
        scores.append(("champion before", f"version {decision.champion_version}"))
    if decision.policy == "gate":
        scores.append(("tolerance", f"{decision.tolerance:g}"))
    rows = "\n".join(f"| {key} | {value} |" for key, value in scores)
    model_link = link_markdown(tracking.model_uri(name, version=version),
                               tracking.model_version_url(settings, name, version))
    return (f"## {markdown_text(name)} version {version} {verdict}\n\n{markdown_text(decision.reason)}\n\n"
            f"| | |\n|---|---|\n{rows}\n\n"
            f"- MLflow model version: {model_link}\n"
            f"- MLflow run: {link_markdown(run_id, tracking.run_url(settings, run_id))}\n")
