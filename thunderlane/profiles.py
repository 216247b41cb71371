"""Training profiles: ``launchers/profiles/<name>.yaml``, mlx-lm's LoRA config format where it
applies, plus the lane's own fields under ``lane:`` (hosts, run name, watchdog, free disk)."""
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .evaluate import policy
from .inventory import LOCAL, NAME_RE as HOST_NAME_RE, InventoryError, abs_path, check_mapping

PROFILE_DIR = Path(__file__).resolve().parent.parent / "launchers" / "profiles"
ENV_VAR = "THUNDER_PROFILES"  # another profile folder (tests, or a user's own set)
NAME_RE = re.compile(r"^[a-z0-9_]{1,64}$")  # checked with fullmatch

LORA_FIELDS = {"model", "data", "fine_tune_type", "optimizer", "batch_size", "learning_rate",
               "lr_schedule", "num_layers", "lora_parameters", "max_seq_length", "mask_prompt",
               "save_every", "val_batches", "seed", "grad_checkpoint"}
LORA_REQUIRED = {"batch_size", "num_layers", "lora_parameters", "max_seq_length", "save_every", "seed"}
LANE_FIELDS = {"hosts", "run_name", "watchdog_seconds", "min_free_mb", "keep_steps", "backend"}
# mlx.launch's backends the lane runs: the TCP ring (default), or jaccl (RDMA over Thunderbolt 5,
# macOS 26.2+). The launcher checks the same list.
BACKENDS = ("ring", "jaccl")


class ProfileError(ValueError):
    """A bad or unknown profile; the message names the profile file and field."""


@dataclass(frozen=True)
class Profile:
    name: str
    path: str
    config: dict          # the mlx-lm part, as the training entry reads it
    hosts: tuple          # inventory host names, rank 0 (the writer) first
    run_name: str
    watchdog_seconds: int = 600
    min_free_mb: int = 1024
    keep_steps: int = 2   # commits whose step files stay in a run directory (2: ranks one commit apart resume)
    backend: str = "ring"  # one of BACKENDS
    promotion: policy.Promotion = policy.Promotion()  # the ``promotion:`` block: fab evaluate's verdict

    @property
    def writer(self):
        return self.hosts[0]


def directory():
    return Path(os.environ.get(ENV_VAR) or PROFILE_DIR)


def known(folder=None):
    return sorted(p.stem for p in Path(folder or directory()).glob("*.yaml"))


def load(name, folder=None):
    """The profile called ``name``; an unknown one is refused with the list of known ones."""
    folder = Path(folder or directory())
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ProfileError(f"profile name {name!r} must match [a-z0-9_]; known: {', '.join(known(folder))}")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(f"unknown profile {name!r}; known: {', '.join(known(folder)) or 'none'}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML: {e}") from None
    return parse(name, data, str(path))


def parse(name, data, where):
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a mapping")
    lane = data.get("lane")
    config = {k: v for k, v in data.items() if k not in ("lane", "promotion")}
    check_mapping(config, where, "profile", LORA_FIELDS, LORA_REQUIRED, ProfileError)
    if not isinstance(lane, dict):
        raise ProfileError(f"{where}: lane: a mapping with hosts and run_name is required")
    check_mapping(lane, where, "lane", LANE_FIELDS, {"hosts", "run_name"}, ProfileError)
    hosts = _lane_hosts(lane["hosts"], where)
    if not isinstance(lane["run_name"], str) or not NAME_RE.fullmatch(lane["run_name"]):
        raise ProfileError(f"{where}: lane.run_name: {lane['run_name']!r} must match [a-z0-9_]")
    _config_values(config, len(hosts), where)
    return Profile(name=name, path=where, config=config, hosts=tuple(hosts), run_name=lane["run_name"],
                   watchdog_seconds=_positive(lane.get("watchdog_seconds", 600), where, "lane.watchdog_seconds"),
                   min_free_mb=_positive(lane.get("min_free_mb", 1024), where, "lane.min_free_mb", zero=True),
                   keep_steps=_keep_steps(lane.get("keep_steps", 2), where),
                   backend=_backend(lane.get("backend", "ring"), where), promotion=_promotion(data, where))


def _promotion(data, where):
    try:
        return policy.parse(data.get("promotion"), where)
    except (policy.PolicyError, TypeError) as e:
        raise ProfileError(str(e)) from None


def _backend(value, where):
    if value not in BACKENDS:
        raise ProfileError(f"{where}: lane.backend: {value!r} is not one of {', '.join(BACKENDS)}")
    return value


def _lane_hosts(hosts, where):
    """Distinct inventory host names; never ``local``, the control machine, which trains nothing."""
    if not isinstance(hosts, list) or not hosts or \
            not all(isinstance(h, str) and HOST_NAME_RE.fullmatch(h) for h in hosts):
        raise ProfileError(f"{where}: lane.hosts: a list of distinct inventory host names")
    if LOCAL in hosts:
        raise ProfileError(f"{where}: lane.hosts: {LOCAL!r} is the control machine, not a compute "
                           f"host; list the inventory's compute hosts only")
    if len(set(hosts)) != len(hosts):
        raise ProfileError(f"{where}: lane.hosts: a list of distinct inventory host names")
    return hosts


def _positive(value, where, key, zero=False):
    if isinstance(value, int) and not isinstance(value, bool) and (value > 0 or (zero and value == 0)):
        return value
    raise ProfileError(f"{where}: {key}: {value!r} is not a positive whole number")


def _keep_steps(value, where):
    """At least 2: a kill between two ranks' checkpoint.json writes leaves them one commit apart,
    and the rank ahead must still hold the commit the other resumes from."""
    if _positive(value, where, "lane.keep_steps") < 2:
        raise ProfileError(f"{where}: lane.keep_steps: {value} is below 2 (the last commit and the one "
                           "before it: ranks a commit apart after a crash resume from the older)")
    return value


def _config_values(config, world, where):
    for key in ("batch_size", "num_layers", "max_seq_length", "save_every"):
        _positive(config[key], where, key)
    _positive(config["seed"], where, "seed", zero=True)
    if config["batch_size"] % world:
        raise ProfileError(f"{where}: batch_size {config['batch_size']} is not divisible by the "
                           f"{world} hosts (mlx-lm splits every batch across ranks)")
    if config.get("fine_tune_type", "lora") != "lora":
        raise ProfileError(f"{where}: fine_tune_type: only 'lora' is supported")
    if config.get("optimizer", "adam") not in ("adam", "adamw"):
        raise ProfileError(f"{where}: optimizer: 'adam' or 'adamw'")
    lora = config["lora_parameters"]
    if not isinstance(lora, dict) or "rank" not in lora or "scale" not in lora:
        raise ProfileError(f"{where}: lora_parameters needs rank and scale (mlx-lm's names)")
    if "learning_rate" not in config and "lr_schedule" not in config:
        raise ProfileError(f"{where}: learning_rate or lr_schedule is required")
    if config.get("data") is not None:
        try:
            config["data"] = abs_path(config["data"], where, "profile", "data")
        except InventoryError as e:
            raise ProfileError(f"{e} (or omit data to use the inventory's dataset_root)") from None

