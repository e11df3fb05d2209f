"""An Adult-like table with known truths: UCI Adult's columns and value names, synthetic rows.

``python -m audit.core.data.adult_like OUT.csv [--n 2000] [--seed 0]`` writes one (deterministic per seed).

Columns: age, workclass, education, education_num, marital_status, occupation, relationship, race, sex,
capital_gain, hours_per_week, native_country, income (``<=50K`` / ``>50K``: the primary label).
What is planted: ``sex`` is written into relationship (``Husband`` / ``Wife`` for the married), occupation
and hours per week; ``race`` into native_country; ``income`` depends on education, age, hours, marriage
and capital gain. Missing values as in Adult: ``?`` in workclass, occupation and native_country (5% of
rows each), plus empty hours_per_week cells (3%).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

COLUMNS = ("age", "workclass", "education", "education_num", "marital_status", "occupation", "relationship",
           "race", "sex", "capital_gain", "hours_per_week", "native_country", "income")
EDUCATION = {"11th": 7, "HS-grad": 9, "Some-college": 10, "Assoc-voc": 11, "Bachelors": 13, "Masters": 14,
             "Doctorate": 16}
OCCUPATIONS = {  # sex -> (occupations, probabilities)
    "Male": (["Craft-repair", "Exec-managerial", "Transport-moving", "Prof-specialty", "Sales", "Adm-clerical"],
             [0.3, 0.2, 0.15, 0.15, 0.15, 0.05]),
    "Female": (["Adm-clerical", "Prof-specialty", "Other-service", "Sales", "Exec-managerial", "Craft-repair"],
               [0.3, 0.2, 0.2, 0.15, 0.1, 0.05]),
}
RACES = (["White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo"], [0.55, 0.2, 0.15, 0.1])
COUNTRIES = {  # race -> (native countries, probabilities)
    "White": (["United-States", "Germany", "Canada", "England"], [0.85, 0.05, 0.05, 0.05]),
    "Black": (["United-States", "Jamaica", "Haiti"], [0.7, 0.2, 0.1]),
    "Asian-Pac-Islander": (["Philippines", "India", "China", "Vietnam", "United-States"], [0.25, 0.2, 0.2, 0.15, 0.2]),
    "Amer-Indian-Eskimo": (["United-States", "Mexico"], [0.6, 0.4]),
}


def adult_like_rows(n: int = 2000, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows (column -> cell text) drawn with ``seed`` (module docstring)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        sex = "Male" if rng.random() < 0.67 else "Female"
        race = str(rng.choice(RACES[0], p=RACES[1]))
        age = int(np.clip(rng.normal(38, 13), 17, 90))
        education = str(rng.choice(list(EDUCATION), p=[0.08, 0.32, 0.22, 0.08, 0.18, 0.08, 0.04]))
        married = rng.random() < (0.55 if age > 30 else 0.15)
        marital = "Married-civ-spouse" if married else str(rng.choice(["Never-married", "Divorced"], p=[0.7, 0.3]))
        if married:
            relationship = "Husband" if sex == "Male" else "Wife"
        else:
            relationship = str(rng.choice(["Not-in-family", "Own-child" if age < 25 else "Unmarried"]))
        occupations, weights = OCCUPATIONS[sex]
        occupation = str(rng.choice(occupations, p=weights))
        hours = float(np.clip(rng.normal(43 if sex == "Male" else 36, 8), 1, 99))
        gain = float(rng.choice([0, rng.uniform(3000, 15000)], p=[0.92, 0.08]))
        score = (0.45 * (EDUCATION[education] - 10) + 0.04 * (age - 38) + 0.05 * (hours - 40) + 1.2 * married
                 + gain / 4000 - 1.5)
        income = ">50K" if rng.random() < 1 / (1 + np.exp(-score)) else "<=50K"
        row = {
            "age": str(age), "workclass": str(rng.choice(["Private", "Self-emp", "Local-gov", "State-gov"],
                                                         p=[0.7, 0.12, 0.1, 0.08])),
            "education": education, "education_num": str(EDUCATION[education]), "marital_status": marital,
            "occupation": occupation, "relationship": relationship, "race": race, "sex": sex,
            "capital_gain": f"{gain:.0f}", "hours_per_week": f"{hours:.0f}",
            "native_country": str(rng.choice(COUNTRIES[race][0], p=COUNTRIES[race][1])), "income": income,
        }
        for col in ("workclass", "occupation", "native_country"):
            if rng.random() < 0.05:
                row[col] = "?"
        if rng.random() < 0.03:
            row["hours_per_week"] = ""
        rows.append(row)
    return rows


def write_adult_like(path: str | Path, n: int = 2000, seed: int = 0) -> Path:
    """Write :func:`adult_like_rows` as a CSV file with a header row; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(adult_like_rows(n, seed))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m audit.core.data.adult_like", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the CSV file to write")
    parser.add_argument("--n", type=int, default=2000, help="rows (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote {write_adult_like(args.out, args.n, args.seed)} ({args.n} rows)")


if __name__ == "__main__":  # pragma: no cover
    main()
