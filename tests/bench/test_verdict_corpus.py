"""bench/verdict_corpus.py: the held-out ground truth on hand-made traces, and the Done-when of issue 21 on the
committed records (bench/data/runs) and the constructed set, so a rule change that breaks it fails here."""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import verdict_corpus  # noqa: E402
from verdict_corpus import Case, constructed_cases, evaluate, ground_truth, real_cases  # noqa: E402


def case(test_pgd: list[float], test_fgsm: list[float], final: float, chance: float = 0.1) -> Case:
    rows = [{"step": 10 * i, "epoch": i, "clean_accuracy": 0.5, "fgsm_accuracy": 0.5, "pgd_accuracy": 0.4,
             "test_clean_accuracy": 0.5, "test_fgsm_accuracy": f, "test_pgd_accuracy": p}
            for i, (p, f) in enumerate(zip(test_pgd, test_fgsm, strict=True))]
    return Case("hand-made", rows, final, held_out_chance=chance)


def test_ground_truth_is_the_start_of_the_signature_stretch_that_reaches_the_end():
    # signature = FGSM - PGD >= 0.10 and PGD < 0.5 x FGSM: checks 1 (a transient), 3, 4 and 5
    pgd, fgsm = [0.30, 0.05, 0.30, 0.04, 0.02, 0.01], [0.40, 0.40, 0.40, 0.50, 0.60, 0.60]
    assert ground_truth(case(pgd, fgsm, final=0.0)) == ("co", 3)
    # the final PGD-50-10 of the last weights must agree: 0.31 is not below 0.5 x 0.60
    assert ground_truth(case(pgd, fgsm, final=0.31)) == ("no_co", None)
    # the same transient without the collapse at the end
    assert ground_truth(case(pgd[:3], fgsm[:3], final=0.28)) == ("no_co", None)


def test_ground_truth_never_robust_needs_a_peak_near_chance_and_no_signature():
    assert ground_truth(case([0.08, 0.11, 0.12], [0.10, 0.13, 0.14], final=0.1)) == ("never_robust", None)
    assert ground_truth(case([0.08, 0.11, 0.121], [0.10, 0.13, 0.14], final=0.1)) == ("no_co", None)
    assert ground_truth(case([0.08, 0.05, 0.04], [0.30, 0.40, 0.50], final=0.0)) == ("co", 0)  # masked


def test_the_rules_meet_issue_21_on_the_recorded_runs_and_the_constructed_set():
    real = real_cases([verdict_corpus.RUNS])
    assert real, "bench/data/runs holds the recorded runs"
    for cases in (real, constructed_cases()):
        result = evaluate(cases)
        assert (result["false_co"], result["missed_co"]) == (0, 0), result["wrong"]
        assert statistics.median(result["onset_errors"]) <= 1
