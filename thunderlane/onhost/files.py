# thunderlane on-host helpers: stdlib only (bundled first into the probe and the training entry)
"""Helpers both on-host programs use: hashing, the safetensors structure check, atomic writes,
and the run directory's bookkeeping names."""
import os
import time

CHUNK = 1 << 20
LANE_DIR = ".lane"  # a run directory's bookkeeping: rank<N>.pid
CHECKPOINT = "checkpoint.json"
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}
MAX_HEADER = 100_000_000


class HexName:
    """A name of ``length`` lower-case hex digits; ``fullmatch`` as a compiled ``^[0-9a-f]{N}$``'s.
    The probe imports neither re nor json: on a host their import costs more than a cache scan."""

    def __init__(self, length):
        self.length = length

    def fullmatch(self, name):
        return len(name) == self.length and not name.strip("0123456789abcdef")


HEX64 = HexName(64)  # a sha256 (an LFS blob's name) or a xet hash


class _Decoding:
    """What json's C scanner reads of a decoder: json.loads's own defaults."""
    strict, object_hook, object_pairs_hook, parse_float, parse_int = True, None, None, float, int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def json_loads(text):
    """``json.loads(text)`` for a str, through the C scanner json.loads itself uses (module
    ``_json``) without importing json; json itself for whatever the scanner does not take (an
    error is then json's own, word for word)."""
    try:
        import _json
        value, end = _json.make_scanner(_Decoding())(text, len(text) - len(text.lstrip(" \t\n\r")))
        if not text[end:].strip(" \t\n\r"):
            return value
    except (ImportError, StopIteration, ValueError):
        pass
    import json
    return json.loads(text)


def _unencodable(value):
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_dumps(obj):
    """``json.dumps(obj, sort_keys=True)``, through the C encoder json.dumps itself uses; json
    itself where that cannot be had (or for a value it refuses: the error is json's own)."""
    try:
        import _json
        encode = _json.make_encoder({}, _unencodable, _json.encode_basestring_ascii, None, ": ", ", ",
                                    True, False, True)
        return "".join(encode(obj, 0))
    except (ImportError, TypeError, ValueError):
        import json
        return json.dumps(obj, sort_keys=True)


def sha256_file(path):
    """Hex sha256 of a file's bytes (the hub's name for an LFS blob)."""
    import hashlib  # here: the fast probe hashes nothing, and OpenSSL's library costs a load
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def checked_write(path, write):
    """``write(path)``; mlx reports a failed write as a RuntimeError without errno ("[write] Unable to
    write N bytes"): that becomes the OSError it stands for, naming ``path``, ENOSPC if the disk is
    now full (under 1 MiB free), else EIO, so that a full disk during a save is a write failure."""
    import errno
    try:
        write(path)
    except RuntimeError as e:
        st = os.statvfs(os.path.dirname(path) or ".")
        full = st.f_bavail * st.f_frsize < 2**20
        raise OSError(errno.ENOSPC if full else errno.EIO, str(e), path) from None


def full_fsync(fd, fcntl_module=None, platform=None):
    """Make ``fd``'s data durable. On macOS ``os.fsync`` leaves it in the drive's cache and
    ``fcntl(F_FULLFSYNC)`` flushes it; a filesystem that refuses F_FULLFSYNC (ENOTSUP, EINVAL on some
    network or external volumes) falls back to fsync. Returns the call used ("F_FULLFSYNC" or
    "fsync"). ``fcntl_module``/``platform``: stand-ins for tests."""
    import sys
    if fcntl_module is None:
        import fcntl as fcntl_module
    if (platform or sys.platform) == "darwin" and hasattr(fcntl_module, "F_FULLFSYNC"):
        try:
            fcntl_module.fcntl(fd, fcntl_module.F_FULLFSYNC)
            return "F_FULLFSYNC"
        except OSError:
            pass
    os.fsync(fd)
    return "fsync"


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        full_fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """``write(tmp)`` then fsync and rename onto ``path``: a kill leaves the old file or the new one,
    never a torn one under the final name. Temporary names start with '.' and hold '.tmp'."""
    path = str(path)
    folder, name = os.path.split(path)
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, dot + suffix) if stem else (name, "")
    tmp = os.path.join(folder, f".{stem}.tmp{os.getpid()}{suffix}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(folder or ".")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path, obj):
    import json

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return atomic_write(path, write)


def read_stripped(path):
    """A small text file's content without surrounding white space, or None when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def disk_full_note(error):
    """' (the disk is full)' for an ENOSPC error, else ''."""
    return " (the disk is full)" if getattr(error, "errno", None) == 28 else ""


def iso_time(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def safetensors_check(path):
    """Structural check without loading: (ok, reason). The header's tensors must tile the data
    region exactly, and the file size must be 8 + header length + end of the last tensor."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False, f"{size} bytes: shorter than the 8-byte header length"
            n = int.from_bytes(head, "little")  # safetensors: a u64, little-endian
            if n > MAX_HEADER or 8 + n > size:
                return False, f"header length {n} does not fit in {size} bytes"
            header = json_loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return False, f"unreadable header: {e}"
    return _check_header(header, size - 8 - n)


def _check_header(header, data_len):
    if not isinstance(header, dict):
        return False, "header is not a JSON object"
    spans = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = t["data_offsets"]
            count = 1
            for dim in t["shape"]:
                count *= _whole(dim)
            width = DTYPE_SIZES[t["dtype"]]
            _whole(start), _whole(end)
        except (KeyError, TypeError, ValueError):
            return False, f"tensor {name}: malformed entry"
        if end - start != count * width:
            return False, f"tensor {name}: {end - start} bytes for shape {t['shape']} {t['dtype']}"
        spans.append((start, end, name))
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            return False, f"tensor {name}: starts at {start}, expected {pos}"
        pos = end
    if pos != data_len:
        return False, f"data is {data_len} bytes, tensors cover {pos}"
    return True, f"{len(spans)} tensors, {data_len} data bytes"


def _whole(value):
    """A non-negative whole number, as safetensors requires of shapes and offsets (JSON floats and
    booleans are not)."""
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value
