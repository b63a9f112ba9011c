"""Models folders on the Hugging Face Hub, and a quick answer to "can the Hub be reached?".

``resolve_models(spec)`` turns ``run --models SPEC`` into a local folder:

* an existing local path always wins (``models``, ``out/models``, ``~/m``);
* ``hf://owner/name`` or ``hf://owner/name@revision`` is always a Hub repository;
* otherwise a string shaped like a repo id, ``owner/name`` or ``owner/name@revision``, is a Hub
  repository; anything else is returned as a local path for the runtime to report.

A repository is fetched whole with ``huggingface_hub.snapshot_download`` into its cache
(``HF_HOME`` / ``HF_HUB_CACHE`` or ``cache_dir``), so a later offline run (``HF_HUB_OFFLINE=1`` or
``local_files_only``) finds it; its top must hold ``manifest.json`` (docs/contract.md §5).

``offline_reason`` is shared with ``moebius_edge.export.hub``: before asking the Hub it opens one
TCP connection with a short timeout, because huggingface_hub retries an unreachable host with
backoff for ~25 s before falling back to its cache. Unreachable, the caller resolves from the cache
only and, when that fails, says why in one line.

The base install does not include ``huggingface_hub``: it is imported inside the functions, and only
for a repository (the ``hub`` extra). Never torch.
"""
from __future__ import annotations

import logging
import re
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from moebius_edge import contract
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)

HUB_URI_PREFIX = "hf://"
# One TCP handshake to a CDN front answers in well under a second; the margin covers a slow DNS.
PROBE_TIMEOUT_S = 3.0
# huggingface_hub's repo id rules, simplified: owner/name of letters, digits, '.', '_' and '-'.
_REPO_SPEC = re.compile(r"(?P<repo_id>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@]+))?", re.ASCII)
_INSTALL_HINT = "pip install 'moebius-edge[hub]'"


def parse_models_spec(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``spec`` names a Hub repository, None for a local path.

    Only the text is looked at; ``resolve_models`` first lets an existing local path win."""
    text = str(spec)
    is_uri = text.startswith(HUB_URI_PREFIX)
    match = _REPO_SPEC.fullmatch(text[len(HUB_URI_PREFIX):] if is_uri else text)
    if match is None:
        if is_uri:
            raise UserError(f"{text} is not a Hugging Face repository: write {HUB_URI_PREFIX}owner/name "
                            f"or {HUB_URI_PREFIX}owner/name@revision")
        return None
    return match["repo_id"], match["revision"]


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the Hub endpoint (``HF_ENDPOINT``), or to the HTTPS proxy in
    between, opens within ``timeout`` seconds; otherwise why not, as ``host:port: reason``."""
    from huggingface_hub import constants

    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    via = ""
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 1080
                                                    if parts.scheme.startswith("socks") else 80)
        via = " (proxy)"
    outcome = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    # getaddrinfo has no timeout of its own (a dead resolver takes ~10 s): bound the whole attempt.
    worker = threading.Thread(target=connect, name="moebius-edge hub probe", daemon=True)
    worker.start()
    worker.join(timeout)
    where = f"{host}:{port}{via}"
    if not outcome:
        return f"{where}: no answer within {timeout:g} s"
    if outcome[0] is None:
        return None
    return f"{where}: {outcome[0].strerror or outcome[0]}"


def offline_reason(local_files_only: bool = False) -> str | None:
    """Why the Hub is not to be asked, worded to follow "and" in an error message; None when it
    is to be asked. Checks ``local_files_only``, then ``HF_HUB_OFFLINE``, then ``hub_unreachable``."""
    from huggingface_hub import constants

    if local_files_only:
        return "offline mode is on (--local-files-only)"
    if constants.is_offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE)"
    why = hub_unreachable()
    return None if why is None else f"the Hub cannot be reached ({why})"


def cache_dir_text(cache_dir) -> str:
    """The Hugging Face cache folder that ``cache_dir`` (None: the default) stands for."""
    from huggingface_hub import constants

    return str(Path(cache_dir).expanduser()) if cache_dir is not None else constants.HF_HUB_CACHE


def download_error(e: Exception, repo_id: str, revision, what: str, cache_dir, *, not_found: str):
    """The one-line ``UserError`` for a huggingface_hub download failure, shared with
    ``moebius_edge.export.hub``; None for an exception that is not a download failure (a
    ``ValueError`` here is huggingface_hub's validation of a repo id the caller explains itself).
    ``LocalEntryNotFoundError`` (not cached) is the caller's: its ways forward differ."""
    from huggingface_hub import errors

    # Most specific first: GatedRepoError < RepositoryNotFoundError < HfHubHTTPError.
    if isinstance(e, errors.RevisionNotFoundError):
        return UserError(f"{repo_id} has no revision {revision!r} on the Hub")
    if isinstance(e, errors.GatedRepoError):
        return UserError(f"{repo_id} is gated: accept its terms on huggingface.co and log in "
                         "(`hf auth login` or HF_TOKEN)")
    if isinstance(e, errors.RepositoryNotFoundError):
        return UserError(f"{not_found} (or it is private: log in with `hf auth login`)")
    if isinstance(e, errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", "?")
        return UserError(f"downloading {what} failed (HTTP {status}); run the command again to resume")
    if isinstance(e, errors.HTTPError):  # the HTTP client's own errors: connection lost mid-download
        return UserError(f"downloading {what} failed ({type(e).__name__}: {e}); run the command again to resume")
    if isinstance(e, OSError):  # disk full, cache folder not writable
        return UserError(f"downloading {what} into {cache_dir_text(cache_dir)} failed: {e.strerror or e}")
    return None


def resolve_models(spec: str, *, local_files_only: bool = False, cache_dir=None) -> Path:
    """The local models folder that ``spec`` names: an existing local path as it is, or the
    cached snapshot of a Hub repository (downloaded when missing, unless offline). See the module
    docstring for the rule. Raises a one-line ``UserError`` when a repository cannot be had."""
    text = str(spec)
    if not text.startswith(HUB_URI_PREFIX):
        local = Path(text).expanduser()
        if local.exists():
            return local
    parsed = parse_models_spec(text)
    if parsed is None:
        return Path(text).expanduser()
    repo_id, revision = parsed
    what = repo_id + (f"@{revision}" if revision else "")
    # "out/models" is a path to some and a repo id to others: say that both were tried.
    subject = what if text.startswith(HUB_URI_PREFIX) else f"{text} is not a local folder, and {what}"
    try:
        from huggingface_hub import errors, snapshot_download
    except ImportError:
        raise UserError(f"{text} is not a local folder, and fetching the Hugging Face repository {what} needs "
                        f"huggingface_hub (not installed): {_INSTALL_HINT}") from None

    offline = offline_reason(local_files_only)
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                        local_files_only=offline is not None))
    except errors.LocalEntryNotFoundError as e:
        if offline is None:
            cause = e.__cause__ or e.__context__
            offline = "the Hub cannot be reached" + (f" ({type(cause).__name__})" if cause is not None else "")
        snapshot = getattr(e, "snapshot_path", None)  # IncompleteSnapshotError (huggingface_hub >= 1.x)
        if snapshot:
            raise UserError(f"the cached copy of {what} ({snapshot}) is incomplete and {offline}: run again "
                            "where the Hub is reachable to complete it") from None
        raise UserError(f"{subject} is not in the Hugging Face cache ({cache_dir_text(cache_dir)}) and {offline}: "
                        f"fetch it where the Hub is reachable (`hf download {repo_id}`), then copy that Hugging "
                        "Face cache here (or point HF_HOME at it), or give a local models folder") from None
    except Exception as e:  # noqa: BLE001 - mapped to one line, or re-raised as it is
        mapped = download_error(e, repo_id, revision, what, cache_dir,
                                not_found=f"{subject} is not a repository on the Hugging Face Hub")
        if mapped is None and not isinstance(e, ValueError):
            raise
        raise mapped or UserError(f"{text} is neither a local folder nor a valid Hugging Face repo id") from None
    if not (folder / contract.MANIFEST_FILE).is_file():
        raise UserError(f"the Hugging Face repository {what} has no {contract.MANIFEST_FILE} at its top "
                        f"({folder}): it is not a models folder written by `moebius-edge export`")
    log.debug("models %s: %s", text, folder)
    return folder
