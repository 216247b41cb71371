# thunderlane on-host shared-store checks: stdlib only (bundled into the probe before probe.py)
"""huggingface_hub 2.x's cache-wide shared blob store, as the probe sees it: ``<hub>/blobs`` marked by
``.huggingface-shared-blobs``, entries ``<hub>/blobs/<2 hex>/<xet hash>`` (+ ``.refs``, ``.lock``); a
repo's ``blobs/<etag>`` may link to one (``../../blobs/<2 hex>/<xet hash>``), and the etag still names
the content. Also what is never part of a cache (macOS Finder's files)."""
import os

if __package__:  # imported from thunderlane.onhost; in a bundle, files.py defined these above
    from .files import HEX64, read_stripped

STORE = "blobs"
STORE_MARKER = ".huggingface-shared-blobs"


def repo_folder(repo_id):
    return "models--" + repo_id.replace("/", "--")


def finder_file(name):
    """macOS Finder's own files (.DS_Store, ._<name> AppleDouble): never part of a cache, nor a leftover."""
    return name == ".DS_Store" or name.startswith("._")



def store_facts(cache_root):
    """The hub root's blobs/ folder: None if there is none, else whether the hub's marker is in it."""
    folder = os.path.join(cache_root, STORE)
    if not os.path.lexists(folder):
        return None
    marker = os.path.join(folder, STORE_MARKER)
    regular = os.path.isdir(folder) and not os.path.islink(folder) and \
        os.path.isfile(marker) and not os.path.islink(marker)
    version = read_stripped(marker) if regular else None
    return {"marked": version == "1", "version": version}


def link_context(cache_root, repo_id, store):
    """What judging a link needs: the real cache root and repo folder, the repo's folder name, the store."""
    root, folder = os.path.realpath(cache_root), repo_folder(repo_id)
    return {"root": root, "folder": folder, "store": store, "repo": os.path.realpath(os.path.join(root, folder))}


def check_link(path, target, where):
    """(store entry, refusal) of a snapshot link: (None, None) when it stays in the repo folder."""
    if os.path.isabs(target):
        return None, f"links outside the repo folder: {target} is absolute; the hub's links are relative"
    if os.path.realpath(path).startswith(where["repo"] + os.sep):
        return None, None
    return _store_link(path, target, where)


def _store_link(path, target, where):
    """(entry relative to the cache root, None) when the snapshot link's repo blob links into the
    marked store of this same cache, by the hub's own relative path and with no link on the way
    (the lexical and the real path agree); (None, why not) for anything else."""
    hop = os.path.join(os.path.realpath(os.path.dirname(os.path.join(os.path.dirname(path), target))),
                       os.path.basename(target))
    if os.path.dirname(hop) != os.path.join(where["repo"], "blobs") or not os.path.islink(hop):
        return None, f"links outside the repo folder ({target} -> {os.path.realpath(path)})"
    return blob_link(hop, where)


def blob_link(hop, where):
    """(entry relative to the cache root, None) when the repo blob ``hop`` (a link) links into the
    marked store of this same cache as the hub links it; (None, why not) for anything else."""
    inner, store = os.readlink(hop), where["store"]
    lexical = os.path.normpath(os.path.join(os.path.dirname(hop), inner))
    name, real = os.path.basename(lexical), os.path.realpath(hop)
    rel, entry = f"{STORE}/{name[:2]}/{name}", os.path.join(where["root"], STORE, name[:2], name)
    why = f"links outside the repo folder: {where['folder']}/blobs/{os.path.basename(hop)} -> "
    if os.path.isabs(inner) or not HEX64.fullmatch(name) or lexical != entry:
        return None, why + f"{inner} is not the hub's shared store"
    if real != entry:
        return None, why + f"{rel} goes through a link to {real}"
    if store is not None and not store["marked"]:
        marker = f"says layout {store['version']!r}, not '1'" if store["version"] else "is missing (or not a file)"
        return None, why + f"{rel}, but the {STORE_MARKER} marker of {STORE}/ at the hub root {marker}"
    if os.path.lexists(entry) and not os.path.isfile(entry):
        return None, why + f"{rel}, which is not a regular file"
    return rel, None


def linked_blobs(where):
    """{etag: size} of the repo's blobs that are links into the marked store of this same cache
    (:func:`blob_link`), sized through the link: the blobs the sync launcher keeps as they are
    (``sync_prep``'s ``linked``) when their size is the source's, so none of them is sent."""
    folder, found = os.path.join(where["repo"], "blobs"), {}
    if not (where["store"] or {}).get("marked") or not os.path.isdir(folder):
        return found
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not finder_file(name) and os.path.islink(path) and os.path.isfile(path) and blob_link(path, where)[0]:
            found[name] = os.path.getsize(path)
    return found


def store_listed(where, store, blob):
    """Whether the store entry's .refs lists this repo's blob. Unlisted, the hub may delete the entry
    when it deletes another repo that uses it; None when .refs is unreadable (the hub then keeps it)."""
    try:
        with open(os.path.join(where["root"], store + ".refs"), encoding="utf-8") as f:
            return f"{where['folder']}/blobs/{blob}" in f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
