"""What sync-cache refuses before any transfer, decided from the caches' facts alone."""
import pytest

from thunderlane.facts import CacheFacts
from thunderlane.inventory import Host
from thunderlane.onhost import probe
from thunderlane.sync import SyncError, _refuse_links
from tests.unit.builders import REPO, to_shared_layout

MAC4 = Host(name="mac4", python="/opt/py/bin/python", dataset_root="/d", runs_root="/r")


def facts(repo):
    return CacheFacts.from_json(probe.cache_facts(str(repo.parent), REPO))


@pytest.mark.parametrize("shared_side", ["local", "mac4"])
def test_a_shared_store_on_either_side_is_refused_naming_the_side(cache_pair, shared_side):
    """verify-cache accepts huggingface_hub 2.x's shared store; sync-cache does not handle it yet,
    so it refuses instead of re-sending what the store holds or turning it into another layout."""
    local, host = cache_pair
    to_shared_layout((local if shared_side == "local" else host).parent, local if shared_side == "local" else host)
    with pytest.raises(SyncError, match=f"^{shared_side}: .*shared blob store"):
        _refuse_links(MAC4, {"local": facts(local), "mac4": facts(host)})


def test_classic_caches_pass(cache_pair):
    local, host = cache_pair
    _refuse_links(MAC4, {"local": facts(local), "mac4": facts(host)})
