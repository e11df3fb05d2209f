"""The CI gate and report comparison: the functional core behind ``splitaudit check`` and
``splitaudit compare``.

A *policy* (YAML) states bounds on the records of a report.json, each rule with
a selector over dataset / model / cut_point / defense / defense_params / attack
/ target / metric / seed::

    rules:
      - name: siamese-hides-race
        select: {defense: siamese, target: race, metric: balanced_accuracy}
        quantity: advantage          # value (default) | advantage | primary_accuracy | cost.<key>
        max: 0.05
      - {name: mi-bound, select: {metric: "mi_*"}, max: 0.1}          # nats
      - {name: psnr-bound, select: {metric: psnr}, max: 15}           # dB
    regression: {tolerance: 0.01, tolerances: {psnr: 0.5}}

Every (rule, selected record) pair is one test case. Against a baseline report,
a record *regresses* when its leakage rose by more than the combined 95%
confidence interval of the two estimates plus a tolerance (see :func:`change_of`),
with the compared records Holm-corrected together (:func:`correct_family`), so
that bootstrap noise alone fails a build in at most ``alpha`` (5%) of
comparisons however many records a report holds, and a baseline equal to the
report never does. Records are paired across reports by :func:`measurement_key`
(defense name, not parameters), so a retuned defense is still compared.

The gate cannot be fooled by what a report lacks: unless explicitly allowed, a
partial report, a NaN / inf number in a record, a baseline record missing from
the report, and a failed cell each fail the check (see :func:`evaluate`).

Leakage direction: a record's leakage grows with ``value``, except where the
attack reports ``advantage = chance - value`` (e.g. a normalised rank, where a
lower rank means more leakage); :func:`orientation` tells which.

Modules: :mod:`audit.gate.policy` (the YAML), :mod:`audit.gate.evaluation` (policy x report ->
outcomes), :mod:`audit.gate.comparison` (two reports, paired), :mod:`audit.gate.junit`; the record
helpers they use are in :mod:`audit.core.records`.
"""
from audit.core.records import (
                                   Record,
                                   case_name,
                                   defense_key,
                                   defense_labels,
                                   fmt,
                                   fmt_ci,
                                   leakage,
                                   measurement_key,
                                   orientation,
                                   oriented,
                                   params_text,
                                   unit_of,
)
from audit.gate.comparison import (
    Change,
    change_of,
    change_p_value,
    classify,
    compare_records,
    correct_family,
    pair_records,
    params_change,
    reseeded,
    utility_changes,
)
from audit.gate.evaluation import CheckResult, Outcome, evaluate, measured, partial_report, report_path
from audit.gate.junit import FAILURE_TYPES, junit_xml
from audit.gate.policy import Policy, Regression, Rule, Selector, load_policy

__all__ = [
    "Change", "CheckResult", "FAILURE_TYPES", "Outcome", "Policy", "Record", "Regression", "Rule", "Selector",
    "case_name", "change_of", "change_p_value", "classify", "compare_records", "correct_family", "defense_key",
    "defense_labels", "evaluate", "fmt",
    "fmt_ci", "junit_xml", "leakage", "load_policy", "measured", "measurement_key", "orientation", "oriented",
    "pair_records", "params_change", "params_text", "partial_report", "report_path", "reseeded", "unit_of", "utility_changes",
]
