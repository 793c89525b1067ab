"""The converter benchmark runs and prints both converters' figures, and a new run's first read (it times nothing in the test)."""

from tools import converter_bench


def test_the_converter_benchmark_prints_both_converters_and_their_ratio(monkeypatch, capsys):
    monkeypatch.setattr(converter_bench, "ROUNDS", 5)
    monkeypatch.setattr(converter_bench, "NEW_RUNS", 2)
    converter_bench.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert [line.split()[0] for line in lines] == ["CPU", "SDK", "the", "default", "CPU", "SDK", "the"]
    assert lines[3].count("x") == 2
    assert all(float(line.split()[-1]) > 0 for line in lines[-2:])  # a first read in a new run, each converter
