"""What sync-cache refuses before any transfer, decided from the caches' facts alone."""
import os

import pytest

from thunderlane.facts import CacheFacts
from thunderlane.inventory import Host
from thunderlane.onhost import probe
from thunderlane.sync import SyncError, _refuse_links
from tests.unit.builders import REPO, to_shared_layout

MAC4 = Host(name="mac4", python="/opt/py/bin/python", dataset_root="/d", runs_root="/r")


def facts(repo):
    return CacheFacts.from_json(probe.cache_facts(str(repo.parent), REPO))


@pytest.mark.parametrize("shared", [(), ("local",), ("mac4",), ("local", "mac4")])
def test_the_shared_store_passes_on_either_side(cache_pair, shared):
    """huggingface_hub 2.x's shared store is a layout the sync handles on both sides."""
    local, host = cache_pair
    for side, repo in (("local", local), ("mac4", host)):
        if side in shared:
            assert to_shared_layout(repo.parent, repo)
    _refuse_links(MAC4, {"local": facts(local), "mac4": facts(host)})


def test_an_escaping_host_link_is_refused_naming_host_and_file(cache_pair, tmp_path):
    local, host = cache_pair
    (tmp_path / "elsewhere.json").write_text("{}")
    snap = next((host / "snapshots").iterdir())
    os.unlink(snap / "config.json")
    os.symlink(os.path.relpath(tmp_path / "elsewhere.json", snap), snap / "config.json")
    with pytest.raises(SyncError, match=r"^mac4: snapshot link\(s\) config.json point outside"):
        _refuse_links(MAC4, {"local": facts(local), "mac4": facts(host)})
