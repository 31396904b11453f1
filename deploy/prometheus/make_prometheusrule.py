"""Write deploy/prometheusrule.yaml (Prometheus Operator) from memory-sidecar-rules.yaml.

The rule groups are copied verbatim (comments included) under ``spec:``, so the
two files cannot drift apart; tests/test_prometheus_rules.py checks they match.
Run after editing the rules: ``python deploy/prometheus/make_prometheusrule.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "memory-sidecar-rules.yaml"
TARGET = HERE.parent / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/memory-sidecar-rules.yaml by
# deploy/prometheus/make_prometheusrule.py: edit the rules there, then run it.
# For the Prometheus Operator (CRD monitoring.coreos.com/v1). Not in kustomization.yaml
# (a cluster without the operator has no such kind): kubectl apply -f deploy/prometheusrule.yaml,
# and give it the labels your Prometheus's ruleSelector expects.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: memory-sidecar
  labels:
    app.kubernetes.io/name: memory-sidecar
    app.kubernetes.io/part-of: mentorix
spec:
"""


def render(source: str) -> str:
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = ["  " + line if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main() -> int:
    TARGET.write_text(render(SOURCE.read_text()))
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
