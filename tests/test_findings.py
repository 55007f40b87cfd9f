"""The README's headline numbers are generated from the stored experiments, never typed."""

from sft_helpers.course.findings import README, block


def test_readme_findings_are_what_the_stored_experiments_say():
    text = README.read_text(encoding="utf-8")
    start, end = "<!-- findings:start -->", "<!-- findings:end -->"
    assert start in text and end in text, "README has no findings block: python -m sft_helpers.course.findings"
    written = text[text.index(start) + len(start):text.index(end)].strip()
    assert written == block().strip(), "stale: run python -m sft_helpers.course.findings"


def test_every_finding_carries_its_interval():
    from sft_helpers.course.findings import lines

    for line in lines():
        assert "95% CI" in line, line
