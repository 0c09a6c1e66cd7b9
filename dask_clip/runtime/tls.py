"""TLS for the cluster: security from the files ``dask scheduler``/``dask worker`` take, what a
local cluster gets when Dask's configuration requires encryption, and a clear error for a TLS
scheduler reached without TLS files (:func:`dask_clip.runtime.cluster.connect`)."""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["tls_security"]

logger = logging.getLogger("dask_clip.runtime.cluster")  # its messages, as before the split


def _has_tls_files(security: Any) -> bool:
    return bool(getattr(security, "tls_ca_file", None) and getattr(security, "tls_scheduler_cert", None))


def _local_security(security: Any) -> Any:
    """What a local cluster is given: None (plain TCP), True (temporary TLS) or a ``Security``."""
    if security is False:
        return None
    if security is not None:
        if security is not True and not _is_security(security):
            raise TypeError(f"security must be a distributed.security.Security, True or None, got {security!r}")
        return security
    from distributed.security import Security

    configured = Security()  # Dask's configuration (DASK_DISTRIBUTED__COMM__...)
    if configured.require_encryption and not _has_tls_files(configured):
        logger.info("dask_clip: encryption required by Dask's configuration: local cluster on temporary TLS")
        return True
    return None


def _is_security(value: Any) -> bool:
    from distributed.security import Security

    return isinstance(value, Security)


def tls_security(
    ca_file: str | None = None, cert: str | None = None, key: str | None = None, *, local: bool = False
) -> Any:
    """A ``distributed.security.Security`` from the files ``dask scheduler``/``dask worker`` take
    (``--tls-ca-file``, ``--tls-cert``, ``--tls-key``), with encryption required.

    Parameters
    ----------
    ca_file
        PEM file of the certificate authority every party's certificate is signed by.
    cert, key
        PEM certificate and key of this party (the key may be in the certificate file).
    local
        Also use them for a local cluster's scheduler and workers.

    Returns
    -------
    distributed.security.Security or None
        None when no file is given.

    Raises
    ------
    FileNotFoundError
        A named file does not exist.
    ValueError
        A certificate without the CA file, or the other way round.
    """
    given = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    if not any(given.values()):
        return None
    for option, path in given.items():
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{option} {path!r} is not a file")
    if not (ca_file and cert):
        raise ValueError(
            "TLS needs --tls-ca-file and --tls-cert (and --tls-key unless the key is in the certificate file)"
        )
    from distributed.security import Security

    roles = ("client", "scheduler", "worker") if local else ("client",)
    files: dict[str, str] = {}
    for role in roles:
        files[f"tls_{role}_cert"] = cert
        if key:
            files[f"tls_{role}_key"] = key
    return Security(require_encryption=True, tls_ca_file=ca_file, **files)


def _check_tls(address: str | None, security: Any) -> None:
    """A clear error, before connecting, for a TLS scheduler and a client with no TLS files."""
    if not address or not address.startswith("tls://") or security is not None:
        return
    from distributed.security import Security

    if Security().get_connection_args("client").get("ssl_context") is None:
        raise ValueError(
            f"the scheduler at {address} uses TLS: pass --tls-ca-file, --tls-cert and --tls-key (the files "
            "`dask worker` takes; Python: connect(security=tls_security(...))), or set Dask's "
            "distributed.comm.tls.* configuration (DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ...)"
        )
