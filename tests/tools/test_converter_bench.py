"""The converter benchmark runs and prints both converters' figures (it times nothing in the test)."""

from tools import converter_bench


def test_the_converter_benchmark_prints_both_converters_and_their_ratio(monkeypatch, capsys):
    monkeypatch.setattr(converter_bench, "ROUNDS", 5)
    converter_bench.main()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["CPU", "SDK", "the", "default"]
    assert lines[-1].count("x") == 2
