"""Text that reads right: a sample never ends in U+FFFD for a character it stopped in the
middle of, and greedy sampling that loops says once which setting avoids it."""
import json

import pytest

from jaxformer.cli import main
from jaxformer.cli.commands.sample import unfinished_utf8
from jaxformer.data.tokenizers import ByteTokenizer
from jaxformer.infer.sampling import repeating_cycle
from jaxformer_testing.runs import tiny_run


@pytest.mark.parametrize("ids, period", [([1, 2, 3, 1, 2, 1, 2, 1, 2], 2), ([5, 5, 5], 1), ([7, 5, 5, 5, 5], 1),
                                         ([1, 2, 3, 1, 2, 3, 1, 2, 3], 3), ([1, 2, 3, 4], None),
                                         ([1, 2, 1, 2], None), ([], None)])
def test_repeating_cycle_finds_the_shortest_period(ids, period):
    assert repeating_cycle(ids) == period


def test_unfinished_utf8_counts_only_a_started_character():
    ids = ByteTokenizer().encode("naïve 日本")
    assert unfinished_utf8(ids) == 0
    assert unfinished_utf8(ids[:-1]) == 2 and unfinished_utf8(ids[:-2]) == 1   # inside 本 (3 bytes)
    assert bytes(ids[:-2 - unfinished_utf8(ids[:-2])]).decode() == "naïve 日"
    assert unfinished_utf8([0x61, 0xFF]) == 0 and unfinished_utf8([0x80, 0x80]) == 0   # invalid, not unfinished
    assert unfinished_utf8(list("😀".encode())[:3]) == 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs") / "tiny")


def test_greedy_loop_gets_one_hint_and_sampling_none(run, capsys):
    assert main(["sample", "--run", str(run), "--temperature", "0", "--max-new-tokens", "48",
                 "--json", "--no-stop"]) == 0
    out = capsys.readouterr()
    ids = json.loads(out.out)["samples"][0]["token_ids"]
    assert repeating_cycle(ids) is not None          # a random tiny model loops when greedy
    assert out.err.count("--repetition-penalty") == 1
    assert main(["sample", "--run", str(run), "--temperature", "0", "--max-new-tokens", "48",
                 "--repetition-penalty", "1.3", "--no-stop"]) == 0
    assert "repeating itself" not in capsys.readouterr().err
    assert main(["sample", "--run", str(run), "--max-new-tokens", "48", "--no-stop"]) == 0
    assert "repeating itself" not in capsys.readouterr().err


def test_streamed_sample_drops_exactly_the_cut_character(run, capsys):
    """Streamed text equals the JSON sample's bytes decoded without their unfinished tail; some
    seeds end inside a character (checked), so the drop is exercised."""
    cut_seen = 0
    for seed in range(12):
        args = ["sample", "--run", str(run), "--max-new-tokens", "33", "--no-stop", "--seed", str(seed)]
        assert main(args + ["--json"]) == 0
        sample = json.loads(capsys.readouterr().out)["samples"][0]
        ids = sample["token_ids"]
        cut = unfinished_utf8(ids)
        cut_seen += cut > 0
        want = bytes(ids[:len(ids) - cut]).decode("utf-8", errors="replace")
        assert sample["text"] == want
        assert main(args + ["--chunk", "4"]) == 0
        assert capsys.readouterr().out == want + "\n"
    assert cut_seen
