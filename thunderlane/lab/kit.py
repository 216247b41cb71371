"""What the tests and the benchmarks both need to drive the lab: where a lab host keeps the model's
repo folder, and copies of a shipped profile under other names. One home, imported by both."""
from pathlib import Path

import yaml
from huggingface_hub.file_download import repo_folder_name

from ..inventory import DEFAULT_REPO
from ..profiles import PROFILE_DIR
from .seed import cache_rel, seeded

REPO_FOLDER = repo_folder_name(repo_id=DEFAULT_REPO, repo_type="model")  # models--mlx-community--gemma-4-e2b-4bit


def host_cache(lab_dir, host):
    """The hub cache root of a lab host (``local`` included): its inventory's hf_cache, if any."""
    return Path(lab_dir) / host / cache_rel(host)


def host_layout(lab_dir, host):
    """'classic' or 'shared': how the last lab-up laid out a lab host's cache (None if never seeded)."""
    return ((seeded(lab_dir) or {}).get("layouts") or {}).get(host)


def host_repo(lab_dir, host):
    """The model's repo folder in a lab host's hub cache."""
    return host_cache(lab_dir, host) / REPO_FOLDER


def write_profile(folder, name, run_name, source="synthetic_mechanics", lane=None, **config):
    """A shipped profile (``source``) written to ``folder/<name>.yaml`` with its own run name;
    ``lane`` updates its ``lane:`` section and ``config`` its mlx-lm fields. Returns the data."""
    data = yaml.safe_load((PROFILE_DIR / f"{source}.yaml").read_text())
    data["lane"] = dict(data["lane"], run_name=run_name, **(lane or {}))
    data.update(config)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return data
