import pandas as pd

from dialsum.ensemble import mbr_select
from dialsum.metrics import CachedTokenizer


def test_mbr_picks_the_consensus_candidate():
    cands = pd.DataFrame({
        "fname": ["d1"] * 4 + ["d2"] * 3,
        "source": ["a", "b", "c", "d", "a", "b", "c"],
        "summary": ["철수가 내일 병원에 간다", "철수가 내일 병원을 간다", "철수는 내일 병원에 간다", "영희가 시장에서 사과를 산다",
                    "비가 온다", "눈이 온다", "비가 많이 온다"],
    })
    out = mbr_select(cands, CachedTokenizer("whitespace"), ["d2", "d1"])
    assert list(out["fname"]) == ["d2", "d1"]
    assert out.set_index("fname").loc["d1", "summary"] == "철수가 내일 병원에 간다"
    assert out.set_index("fname").loc["d2", "summary"] == "비가 온다"


def test_mbr_single_candidate_and_ties_are_deterministic():
    cands = pd.DataFrame({"fname": ["x", "y", "y"], "source": ["a", "a", "b"], "summary": ["하나", "둘", "셋"]})
    out = mbr_select(cands, CachedTokenizer("whitespace"), ["x", "y"])
    assert list(out["summary"]) == ["하나", "둘"]  # a tie goes to the first source
