"""rsync's -i lines of each tool, and mirror-back's file data figure from them when rsync prints no
byte counts (openrsync: session.c logs one rounded 'Transfer complete' line, and only with -v)."""
import pytest

from thunderlane import itemized
from thunderlane.mirror import sent_figure

ADAPTER, CKPT = "0000010_adapters.safetensors", "checkpoint.json"


def rsync3_pull(literal=True):
    """rsync 3 pulling with -t -i --stats (itemize: YXcstpoguax; stats: main.c output_summary())."""
    out = (f"receiving incremental file list\n>f+++++++++ {ADAPTER}\n>f.st...... {CKPT}\n"
           ".f..t...... adapter_config.json\n\nNumber of files: 3 (reg: 3)\n")
    return out + ("Literal data: 41,001 bytes\nMatched data: 0 bytes\n" if literal else "")


OPENRSYNC_PULL = f">f+++++++ {ADAPTER}\n>f+++++++ {CKPT}\n"   # openrsync/2.6.9 itemize: 7 flags, no stats


@pytest.mark.parametrize("output,way,names", [
    (rsync3_pull(), ">", [ADAPTER, CKPT]),
    (OPENRSYNC_PULL, ">", [ADAPTER, CKPT]),
    ("<f+++++++++ blobs/ab\r\n   12 100%  1.00MB/s  0:00:00 (xfr#1, to-chk=0/1)\n", "<", ["blobs/ab"]),
    ("<f+++++++ blobs/ab\n", ">", []),                                  # sent, not received
    ("cL+++++++++ s/config.json -> ../../blobs/ab\ncd+++++++++ ./\n*deleting   x\n", "<", []),
    (".f..t...... ab\n<f+++ ab\nab\n", "<", []),
])
def test_transferred_names_regular_files_itemized_each_way(output, way, names):
    assert itemized.transferred(output, way) == names


def staged(tmp_path):
    (tmp_path / ADAPTER).write_bytes(b"a" * 41_000)
    (tmp_path / CKPT).write_bytes(b"{}")
    (tmp_path / "adapter_config.json").write_bytes(b"{}" * 10)
    return tmp_path


def test_mirror_figure_is_rsyncs_literal_data_when_printed(tmp_path):
    assert sent_figure(rsync3_pull(), staged(tmp_path)) == (41_001, None)


def test_mirror_figure_without_stats_is_derived_from_the_files_received(tmp_path):
    assert sent_figure(OPENRSYNC_PULL, staged(tmp_path)) == (41_002, 2)
    assert sent_figure(rsync3_pull(literal=False), staged(tmp_path)) == (41_002, 2)   # adapter_config: not sent


@pytest.mark.parametrize("output", [f">f+++++++ {ADAPTER}\n>f+++++++ gone.json\n", ">f+++++++ ../../etc/passwd\n"])
def test_mirror_figure_is_unknown_when_a_name_is_not_staged_or_not_flat(tmp_path, output):
    assert sent_figure(output, staged(tmp_path)) == (None, None)

