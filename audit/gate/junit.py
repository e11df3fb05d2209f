"""JUnit XML of a check's outcomes, for CI systems."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from audit.gate.evaluation import CheckResult, Outcome

FAILURE_TYPES = {"regression": "LeakageRegression", "removed-records": "RemovedRecord", "non-finite": "NonFiniteValue",
                 "partial-report": "PartialReport", "failed-cells": "FailedCell"}


def junit_xml(result: CheckResult, name: str = "splitaudit check") -> str:
    """JUnit XML: one ``testsuite`` per rule (plus ``regression``, ``removed-records``, ``non-finite``,
    ``partial-report`` and ``failed-cells``), one
    ``testcase`` per (rule, record); a selector that matched nothing is a skipped case."""
    suites: dict[str, list[Outcome]] = {}
    for o in result.outcomes:
        suites.setdefault(o.suite, []).append(o)
    root = ET.Element("testsuites", name=name, tests=str(len(result.outcomes) + len(result.unmatched)),
                      failures=str(len(result.failures)), errors="0", skipped=str(len(result.unmatched)))
    for suite, outcomes in suites.items():
        el = ET.SubElement(root, "testsuite", name=suite, tests=str(len(outcomes)),
                           failures=str(sum(not o.passed for o in outcomes)), errors="0", skipped="0")
        for o in outcomes:
            case = ET.SubElement(el, "testcase", classname=f"splitaudit.{suite}", name=o.case, time="0")
            if o.passed:
                ET.SubElement(case, "system-out").text = o.message
            else:
                ET.SubElement(case, "failure", message=o.message,
                              type=FAILURE_TYPES.get(suite, "LeakageBound")).text = o.message
    for suite in result.unmatched:
        el = ET.SubElement(root, "testsuite", name=suite, tests="1", failures="0", errors="0", skipped="1")
        case = ET.SubElement(el, "testcase", classname=f"splitaudit.{suite}", name="(no record matched)", time="0")
        ET.SubElement(case, "skipped", message=f"{suite}: the selector matched no record")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
