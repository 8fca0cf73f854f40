"""Generate the Grafana dashboard of the ICH service (monitoring/grafana/ich-dashboard.json).

The dashboard is code, built with grafana-foundation-sdk, so that a query fix is a reviewed diff rather than a
hand-edited JSON blob. Panels: studies per minute, latency per stage, the distribution of case probabilities,
positive and indeterminate rates, errors by reason, the durable job queue (jobs by status, the oldest queued
job's age, queue time, attempts), Triton queue and compute time, and GPU utilisation (DCGM exporter, with
Triton's own gauge as a fallback).

    python monitoring/grafana/dashboard.py           # rewrite ich-dashboard.json
    python monitoring/grafana/dashboard.py --check   # exit 1 when the JSON's panels or queries are stale

The check compares panel titles, types and queries rather than bytes, so that another SDK release that only
reorders or adds defaults does not fail a fresh machine's `make k8s-check`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Final

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dbm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT: Final = Path(__file__).resolve().parent / "ich-dashboard.json"
UID: Final = "ich-service"

#: Label filters of the two scrape jobs (the ServiceMonitors' job labels) and the namespace variable.
GATEWAY: Final = 'job="ich-gateway", namespace=~"$namespace"'
TRITON: Final = 'job="ich-triton", namespace=~"$namespace"'
BASE_MODELS: Final = 'model=~"ich_unet_.*"'
ANALYSED: Final = 'outcome=~"positive|negative|indeterminate"'

_DATASOURCE: Final = dbm.DataSourceRef(type_val="prometheus", uid="${datasource}")

_log = logging.getLogger(__name__)


def _query(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(_DATASOURCE)


def _timeseries(title: str, description: str, unit: str, queries: list[tuple[str, str]]) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit)
        .height(8)
        .span(12)
        .line_width(1)
        .fill_opacity(10)
    )
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def _rate_band(outcome: str) -> str:
    return (
        f'sum(rate(ich_cases_total{{{GATEWAY}, outcome="{outcome}"}}[1h]))'
        f" / sum(rate(ich_cases_total{{{GATEWAY}, {ANALYSED}}}[1h]))"
    )


def _per_request(duration_us: str) -> str:
    """Seconds per successful request of each base model, from one of Triton's cumulative µs counters."""
    selector = f"{{{TRITON}, {BASE_MODELS}}}[$__rate_interval]"
    return (
        f"sum by (model) (rate({duration_us}{selector}))"
        f" / sum by (model) (rate(nv_inference_request_success{selector})) / 1e6"
    )


def build() -> dbm.Dashboard:
    """The dashboard model."""
    inflight = (
        stat.Panel()
        .title("Cases in flight")
        .description("Studies being analysed right now, all gateway replicas.")
        .datasource(_DATASOURCE)
        .height(8)
        .span(6)
        .with_target(_query(f"sum(ich_inflight_cases{{{GATEWAY}}})", "in flight", "A"))
    )
    probability = (
        heatmap.Panel()
        .title("Case probability distribution")
        .description(
            "How many analysed studies fell in each band of ich_probability over time. A shift of mass "
            "between bands, with no change of population, points at input drift (scanner, protocol)."
        )
        .datasource(_DATASOURCE)
        .height(8)
        .span(12)
        .calculate(False)
        .with_target(
            _query(
                f"sum by (le) (increase(ich_case_probability_bucket{{{GATEWAY}}}[$__rate_interval]))",
                "{{le}}",
                "A",
            ).format(PromQueryFormat.HEATMAP)
        )
    )
    return (
        db.Dashboard("ICH detection service")
        .uid(UID)
        .description("Gateway, ensemble and Triton health of the intracranial hemorrhage detection service.")
        .tags(["ich", "triton", "radiology-ai"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("namespace")
            .label("Namespace")
            .datasource(_DATASOURCE)
            .query('label_values(ich_cases_total{job="ich-gateway"}, namespace)')
            .include_all(True)
            .all_value(".*")
        )
        .with_row(db.Row("Traffic and outcomes"))
        .with_panel(
            _timeseries(
                "Studies per minute",
                "Cases posted to /v1/cases per minute, by outcome.",
                "short",
                [
                    (
                        f"sum by (outcome) (rate(ich_cases_total{{{GATEWAY}}}[$__rate_interval])) * 60",
                        "{{outcome}}",
                    )
                ],
            ).span(18)
        )
        .with_panel(inflight)
        .with_panel(
            _timeseries(
                "Positive and indeterminate rates (1 h)",
                "Share of analysed studies called positive, and share in the indeterminate band [0.4, 0.6]. "
                "The alerts use 6-hour windows and the bands 2-40% (positive) and up to 15% (indeterminate).",
                "percentunit",
                [(_rate_band("positive"), "positive"), (_rate_band("indeterminate"), "indeterminate")],
            )
        )
        .with_panel(
            _timeseries(
                "Errors by reason",
                "Engine errors by reason, cases that ended in an error, and HTTP 5xx answers by route.",
                "reqps",
                [
                    (
                        f"sum by (reason) (rate(ich_engine_errors_total{{{GATEWAY}}}[$__rate_interval]))",
                        "engine: {{reason}}",
                    ),
                    (
                        f'sum(rate(ich_cases_total{{{GATEWAY}, outcome="error"}}[$__rate_interval]))',
                        "case errors",
                    ),
                    (
                        f'sum by (route, status) (rate(ich_http_requests_total{{{GATEWAY}, status=~"5.."}}'
                        "[$__rate_interval]))",
                        "HTTP {{status}} {{route}}",
                    ),
                ],
            )
        )
        .with_row(db.Row("Latency"))
        .with_panel(
            _timeseries(
                "Latency per stage (p50, p95)",
                "Decode, preprocess, inference and aggregate time of one study.",
                "s",
                [
                    (
                        "histogram_quantile(0.95, sum by (le, stage) "
                        f"(rate(ich_stage_seconds_bucket{{{GATEWAY}}}[$__rate_interval])))",
                        "p95 {{stage}}",
                    ),
                    (
                        "histogram_quantile(0.5, sum by (le, stage) "
                        f"(rate(ich_stage_seconds_bucket{{{GATEWAY}}}[$__rate_interval])))",
                        "p50 {{stage}}",
                    ),
                ],
            )
        )
        .with_panel(
            _timeseries(
                "Slices per study (p50, p95)",
                "Slices analysed per study: inference time grows with it.",
                "short",
                [
                    (
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(ich_slices_per_case_bucket{{{GATEWAY}}}[$__rate_interval])))",
                        "p95",
                    ),
                    (
                        "histogram_quantile(0.5, sum by (le) "
                        f"(rate(ich_slices_per_case_bucket{{{GATEWAY}}}[$__rate_interval])))",
                        "p50",
                    ),
                ],
            )
        )
        .with_row(db.Row("Model output"))
        .with_panel(probability)
        .with_panel(
            _timeseries(
                "Mean case probability",
                "Average ich_probability of analysed studies.",
                "percentunit",
                [
                    (
                        f"sum(rate(ich_case_probability_sum{{{GATEWAY}}}[1h])) / "
                        f"sum(rate(ich_case_probability_count{{{GATEWAY}}}[1h]))",
                        "mean",
                    )
                ],
            )
        )
        .with_row(db.Row("Job queue (/v1/studies)"))
        .with_panel(
            _timeseries(
                "Jobs by status",
                "Jobs in the shared store (every replica reports the same numbers, hence max).",
                "short",
                [(f"max by (status) (ich_jobs{{{GATEWAY}}})", "{{status}}")],
            )
        )
        .with_panel(
            _timeseries(
                "Oldest queued job and queue time (p50, p95)",
                "Age of the oldest job still waiting (what ICHJobQueueStale alerts on), and the time "
                "from the 202 to the start of the analysis.",
                "s",
                [
                    (f"max(ich_job_oldest_queued_seconds{{{GATEWAY}}})", "oldest queued"),
                    (
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(ich_job_queue_seconds_bucket{{{GATEWAY}}}[$__rate_interval])))",
                        "queue p95",
                    ),
                    (
                        "histogram_quantile(0.5, sum by (le) "
                        f"(rate(ich_job_queue_seconds_bucket{{{GATEWAY}}}[$__rate_interval])))",
                        "queue p50",
                    ),
                ],
            )
        )
        .with_panel(
            _timeseries(
                "Job attempts per minute",
                "How attempts ended: done, failed, retried (engine unavailable), released (shutdown), lost "
                "(lease lost: a stalled worker or a deleted job); and jobs purged by retention.",
                "short",
                [
                    (
                        "sum by (outcome) "
                        f"(rate(ich_job_attempts_total{{{GATEWAY}}}[$__rate_interval])) * 60",
                        "{{outcome}}",
                    ),
                    (f"sum(rate(ich_jobs_purged_total{{{GATEWAY}}}[$__rate_interval])) * 60", "purged"),
                ],
            )
        )
        .with_row(db.Row("Triton (gpu overlay)"))
        .with_panel(
            _timeseries(
                "Triton queue and compute time per request",
                "Per base model: time a request waits in the queue (what the Triton HPA scales on, target "
                "50 ms) and the time the GPU spends on it.",
                "s",
                [
                    (_per_request("nv_inference_queue_duration_us"), "queue {{model}}"),
                    (_per_request("nv_inference_compute_infer_duration_us"), "compute {{model}}"),
                ],
            )
        )
        .with_panel(
            _timeseries(
                "GPU utilisation",
                "DCGM exporter's DCGM_FI_DEV_GPU_UTIL per GPU; Triton's nv_gpu_utilization where DCGM "
                "exporter is not installed.",
                "percent",
                [
                    ("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "DCGM {{Hostname}} GPU {{gpu}}"),
                    (f"avg by (pod, gpu_uuid) (nv_gpu_utilization{{{TRITON}}}) * 100", "Triton {{pod}}"),
                ],
            )
            .min(0)
            .max(100)
        )
        .build()
    )


def to_json(model: dbm.Dashboard) -> str:
    """The dashboard as the JSON Grafana imports (stable key order, trailing newline)."""
    return json.dumps(model, cls=JSONEncoder, indent=2) + "\n"


def essence(document: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(title, type, queries) of every panel: what --check compares."""
    return [
        (p.get("title", ""), p.get("type", ""), tuple(t.get("expr", "") for t in p.get("targets", [])))
        for p in document.get("panels", [])
    ]


def main(argv: list[str] | None = None) -> int:
    """Write the JSON, or with ``--check`` compare it with what the code builds."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    text = to_json(build())
    if not args.check:
        args.output.write_text(text)
        _log.info("wrote %s", args.output)
        return 0
    committed = json.loads(args.output.read_text()) if args.output.exists() else {}
    if essence(committed) != essence(json.loads(text)) or committed.get("uid") != UID:
        _log.error("%s is stale: run python monitoring/grafana/dashboard.py", args.output)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
