"""Benchmark plumbing (the benchmarks themselves are commands, not tests)."""

from sft_helpers.bench import efficiency_table, write_section
from sft_helpers.packing import long_tailed_lengths


def test_write_section_replaces_only_its_own_block(tmp_path):
    path = tmp_path / "b.md"
    path.write_text("# Benchmarks\n\nintro\n")
    write_section("packing", "first", path)
    write_section("qlora-tiny", "other", path)
    write_section("packing", "second", path)
    text = path.read_text()
    assert "first" not in text and text.count("second") == 1 and "other" in text and text.startswith("# Benchmarks")
    assert text.index("second") < text.index("other")  # replaced in place


def test_efficiency_table_orders_the_packers_as_the_lesson_says():
    rows = {r["method"].split(", ")[-1]: r["efficiency"] for r in efficiency_table(long_tailed_lengths(3000, 2048), 2048)}
    assert rows["bfd"] >= 0.99 and rows["bfd"] >= rows["ffd"] > rows["sequential"]
    assert rows["batches of 16 (random)"] < 0.5 < rows["batches of 16 (length-grouped)"]
