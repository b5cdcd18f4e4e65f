"""The Storage SCP: a pynetdicom acceptor that spools mammograms before it says "stored".

Accepted: Digital Mammography X-Ray Image Storage For Presentation (1.2.840.10008.5.1.4.1.1.1.2)
and For Processing (1.2.840.10008.5.1.4.1.1.1.2.1), and Verification (C-ECHO). Any other
SOP class is refused at association (its presentation context is rejected: "abstract syntax
not supported"), so a C-STORE of, say, CT never starts.

C-STORE answers (PS3.4 Annex B):

=========  ==========================================================================
0x0000     stored: the dataset is on disk (fsync'd, renamed, folder fsync'd)
0xA700     out of resources: it could not be stored (disk full, below ``min_free_mb``,
           I/O error); the sender should retry later
0xA900     dataset does not match SOP class: no SOP Instance UID, SOP Class UID not
           the context's, Modality not MG, or no Pixel Data
0xC210     cannot understand: the dataset cannot be decoded
=========  ==========================================================================

Bounds (issue #15): a connection that has not sent its whole A-ASSOCIATE-RQ within
``handshake_timeout_s`` is closed before it becomes an association, so idle sockets (a
slowloris) never take one of the ``max_associations`` slots, and at most
``max_pending_connections`` such connections wait at once. A dataset larger than
``max_dataset_mb`` is not kept: its further P-DATA fragments are discarded as they arrive and
the C-STORE is answered 0xA700 with the reason; a deflated dataset is inflated (for the header
checks) as a stream and refused with 0xA700 once it would exceed the same limit, so a 1.5 MB
file that inflates to GBs never does. The node's own memory per association stays within that
limit; the pixels are decoded only in a worker process (:mod:`bcedge.serve.isolation`).

Callers: ``require_calling_aet`` rejects unknown calling AE titles at association
(A-ASSOCIATE-RJ, permanent, "calling AE title not recognised"); when ``allowed_addresses``
is set, connections from other addresses are closed before any association.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import select
import socket
import ssl
import struct
import threading
import time
import zlib
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from bcedge.serve.config import NodeConfig
from bcedge.serve.spool import Spool, SpoolFullError, uid_hash
from bcedge.serve.state import NodeState

LOG = logging.getLogger("bcedge.serve")

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
ACCEPTED_SOP_CLASSES = {
    MG_FOR_PRESENTATION: "Digital Mammography X-Ray Image Storage - For Presentation",
    MG_FOR_PROCESSING: "Digital Mammography X-Ray Image Storage - For Processing",
}
#: Transfer syntaxes accepted for MG: the uncompressed ones and those bcedge.dicom decodes
#: (pylibjpeg with the ``dicom`` extra).
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO: 64 characters at most
    return ds


#: An A-ASSOCIATE-RQ larger than this is not waited for in full (pynetdicom reads the rest).
_MAX_PEEK = 64 * 1024


def _request_arrives(sock: Any, timeout: float) -> bool:
    """Wait until ``sock`` holds a whole A-ASSOCIATE-RQ PDU (peeked, not read); False after ``timeout``.

    Another first PDU type, or one claiming more than :data:`_MAX_PEEK` bytes, counts as arrived
    (pynetdicom answers it). A TLS socket counts once any data is readable (TLS cannot peek).
    """
    deadline = time.monotonic() + timeout
    if isinstance(sock, ssl.SSLSocket):
        if sock.pending():
            return True
        readable, _, _ = select.select([sock], [], [], timeout)
        return bool(readable)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        readable, _, _ = select.select([sock], [], [], remaining)
        if not readable:
            return False
        try:
            head = sock.recv(6, socket.MSG_PEEK)
        except OSError:
            return False
        if not head:
            return False  # closed by the peer
        if head[0] != 0x01:
            return True
        if len(head) == 6:
            length = struct.unpack(">I", head[2:6])[0]
            if length > _MAX_PEEK:
                return True
            try:
                if len(sock.recv(6 + length, socket.MSG_PEEK)) >= 6 + length:
                    return True
            except OSError:
                return False
        time.sleep(0.02)  # part of the PDU is there; wait for the rest without spinning


def _server_class(allowed: list[str], handshake_timeout: float, max_pending: int) -> type[ThreadedAssociationServer]:
    """pynetdicom's threaded server with an address allow-list, TLS handshakes off the accept loop,
    and no association slot for a connection until its A-ASSOCIATE-RQ has arrived."""
    networks = [ipaddress.ip_network(text, strict=False) for text in allowed]
    pending_lock = threading.Lock()

    class _NodeServer(ThreadedAssociationServer):
        bcedge_state: NodeState | None = None
        bcedge_pending = 0

        def get_request(self) -> tuple[Any, Any]:
            # pynetdicom wraps the socket here with an immediate handshake, in the accept loop: one
            # silent TLS client would block every other caller. Defer it to the connection's thread.
            client, address = self.socket.accept()  # type: ignore[union-attr]
            if self.ssl_context:
                client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
            return client, address

        def verify_request(self, request: Any, client_address: Any) -> bool:
            if not networks:
                return True
            host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
            try:
                ip = ipaddress.ip_address(host.split("%")[0])
            except ValueError:
                ip = None
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            ok = ip is not None and any(ip.version == n.version and ip in n for n in networks)
            if not ok:
                self._refused(f"connection from {host} refused: address not in [node] allowed_addresses")
            return ok

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
            with pending_lock:
                full = type(self).bcedge_pending >= max_pending
                if not full:
                    type(self).bcedge_pending += 1
            if full:
                self._refused(
                    f"connection from {host} closed: {max_pending} connections already wait for their "
                    "association request ([node] max_pending_connections)"
                )
                self.shutdown_request(request)
                return
            try:
                started = time.monotonic()
                if isinstance(request, ssl.SSLSocket):
                    try:
                        request.settimeout(handshake_timeout)
                        request.do_handshake()
                        request.settimeout(None)  # as pynetdicom expects: blocking, it polls with select
                    except (OSError, ValueError) as exc:
                        self._refused(f"TLS handshake with {host} failed: {type(exc).__name__}: {exc}")
                        self.shutdown_request(request)
                        return
                left = max(0.0, handshake_timeout - (time.monotonic() - started))
                if not _request_arrives(request, left):
                    self._refused(
                        f"connection from {host} closed: no association request within {handshake_timeout:g} s "
                        "([node] handshake_timeout_s)"
                    )
                    self.shutdown_request(request)
                    return
            finally:
                with pending_lock:
                    type(self).bcedge_pending -= 1
            super().process_request_thread(request, client_address)

        def _refused(self, message: str) -> None:
            LOG.warning(message)
            if self.bcedge_state is not None:
                self.bcedge_state.count("associations_rejected")
                self.bcedge_state.error("scp", message)

    return _NodeServer


class StorageSCP:
    """The listening side of the node.

    Args:
        config: ``[node]`` of the config.
        spool: where accepted datasets go (durably) before 0x0000 is answered.
        state: counters and errors.
        ssl_context: TLS for incoming connections, or None.
    """

    def __init__(
        self, config: NodeConfig, spool: Spool, state: NodeState, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.config = config
        self.spool = spool
        self.state = state
        self.ssl_context = ssl_context
        self.server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self.max_dataset_bytes = config.max_dataset_mb * 2**20
        self._received: dict[int, int] = {}  # association id -> dataset bytes received for the current message
        self._over: set[int] = set()  # associations whose current dataset went over the limit
        ae = AE(ae_title=config.ae_title)
        for uid in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
        if not config.allow_any_calling_ae_title:
            ae.require_calling_aet = list(config.allowed_calling_ae_titles)
        ae.require_called_aet = True  # a caller must address this node by its AE title
        ae.maximum_associations = config.max_associations
        ae.acse_timeout = config.acse_timeout_s
        ae.dimse_timeout = config.dimse_timeout_s
        ae.network_timeout = config.network_timeout_s
        ae.maximum_pdu_size = config.max_pdu
        self.ae = ae

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (the port is chosen by the OS when the config says 0)."""
        if self.server is None:
            raise RuntimeError("the SCP is not started")
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> tuple[str, int]:
        """Bind and serve in a background thread; returns the bound (host, port)."""
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_RELEASED, self._forget),
            (evt.EVT_ABORTED, self._forget),
        ]
        server = self.ae.make_server(
            (self.config.bind, self.config.port),
            ssl_context=self.ssl_context,
            evt_handlers=handlers,
            server_class=_server_class(
                self.config.allowed_addresses, self.config.handshake_timeout_s, self.config.max_pending_connections
            ),
        )
        server.bcedge_state = self.state
        # As AE.start_server(block=False) does; registered so AE.shutdown() stops it too.
        self.ae._servers.append(server)
        self._thread = threading.Thread(target=server.serve_forever, name="bcedge-serve-scp", daemon=True)
        self._thread.start()
        self.server = server
        return self.address

    def stop(self) -> None:
        """Stop accepting, abort running associations, close the socket."""
        if self.server is not None:
            self.ae.shutdown()
            self.server = None

    # ------------------------------------------------------------------ handlers

    def _caller(self, event: Any) -> str:
        requestor = event.assoc.requestor
        return f"'{requestor.ae_title}'@{requestor.address}"

    def _on_accepted(self, event: Any) -> None:
        self.state.count("associations_accepted")
        LOG.debug("association accepted from %s", self._caller(event))

    def _on_rejected(self, event: Any) -> None:
        self.state.count("associations_rejected")
        calling = str(event.assoc.requestor.ae_title).strip()
        primitive = getattr(event.assoc.requestor, "primitive", None)
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        if not self.config.allow_any_calling_ae_title and calling not in self.config.allowed_calling_ae_titles:
            why = "calling AE title not in [node] allowed_calling_ae_titles"
        elif called and called != self.config.ae_title:
            why = f"called AE title '{called}' is not this node's ('{self.config.ae_title}')"
        else:
            why = f"more than {self.config.max_associations} associations at once"
        message = f"association from {self._caller(event)} rejected: {why}"
        LOG.warning(message)
        self.state.error("scp", message)

    def _on_pdu(self, event: Any) -> None:
        """Count the dataset bytes of the message being received; past the limit, stop keeping them.

        Runs in the association's reader thread before pynetdicom appends the PDU's fragments to the
        message, so swapping the message's buffer for a sink here drops this PDU's bytes too.
        """
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        key = id(event.assoc)
        total = self._received.get(key, 0)
        for item in items:
            data = item.presentation_data_value
            if data and not data[0] & 1:  # control header bit 0 unset: a data set fragment
                total += len(data) - 1
        self._received[key] = total
        if total > self.max_dataset_bytes and key not in self._over:
            message = getattr(getattr(event.assoc, "dimse", None), "message", None)
            if message is not None and getattr(message, "data_set", None) is not None:
                message.data_set = _Sink()
                self._over.add(key)
            else:  # pynetdicom's internals differ: drop the connection instead of buffering on
                LOG.warning("dataset over [node] max_dataset_mb from %s: connection closed", self._caller(event))
                with contextlib.suppress(OSError, AttributeError):
                    event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    def _forget(self, event: Any) -> None:
        self._received.pop(id(event.assoc), None)
        self._over.discard(id(event.assoc))

    def _dataset_done(self, event: Any) -> bool:
        """Reset the byte count for the next message; True when this one went over the limit."""
        key = id(event.assoc)
        self._received.pop(key, None)
        over = key in self._over
        self._over.discard(key)
        return over

    def _on_echo(self, event: Any) -> int:
        self.state.count("echoes")
        return STATUS_SUCCESS

    def _refuse(self, event: Any, code: int, reason: str) -> Dataset:
        self.state.count("refused")
        message = f"C-STORE from {self._caller(event)} refused with 0x{code:04X}: {reason}"
        LOG.warning(message)
        self.state.error("scp", message)
        return _status(code, reason)

    def _on_store(self, event: Any) -> int | Dataset:
        """Check the header, spool the dataset durably, answer; never raises."""
        limit_mb = self.config.max_dataset_mb
        if self._dataset_done(event):
            return self._refuse(
                event, STATUS_OUT_OF_RESOURCES, f"dataset larger than {limit_mb} MiB ([node] max_dataset_mb)"
            )
        try:
            ds = self._header(event)
        except _TooLarge:
            return self._refuse(
                event,
                STATUS_OUT_OF_RESOURCES,
                f"deflated dataset inflates beyond {limit_mb} MiB ([node] max_dataset_mb)",
            )
        except Exception as exc:  # pydicom raises many types on malformed data
            return self._refuse(event, STATUS_CANNOT_UNDERSTAND, f"dataset cannot be decoded ({type(exc).__name__})")
        try:
            sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
            sop_class = str(ds.get("SOPClassUID", "") or "").strip()
            modality = str(ds.get("Modality", "") or "").strip()
            has_pixels = "PixelData" in ds or getattr(ds, "bcedge_has_pixels", False)
        except Exception as exc:  # pydicom raises many types on malformed data
            return self._refuse(event, STATUS_CANNOT_UNDERSTAND, f"dataset cannot be decoded ({type(exc).__name__})")
        context_class = str(event.context.abstract_syntax)
        if not sop_uid:
            return self._refuse(event, STATUS_DATASET_MISMATCH, "SOP Instance UID (0008,0018) missing")
        if sop_class != context_class:
            return self._refuse(
                event, STATUS_DATASET_MISMATCH, f"SOP Class UID (0008,0016) {sop_class or 'missing'} != context"
            )
        if modality != "MG":
            return self._refuse(event, STATUS_DATASET_MISMATCH, f"Modality (0008,0060) is '{modality}', not MG")
        if not has_pixels:
            return self._refuse(event, STATUS_DATASET_MISMATCH, "no Pixel Data (7FE0,0010)")
        t0 = time.perf_counter()
        try:
            data = event.encoded_dataset(include_meta=True)
            path = self.spool.put(data, sop_uid)
        except SpoolFullError as exc:
            return self._refuse(event, STATUS_OUT_OF_RESOURCES, f"out of disk space ({exc})")
        except OSError as exc:
            return self._refuse(event, STATUS_OUT_OF_RESOURCES, f"cannot store ({exc.strerror or type(exc).__name__})")
        except Exception as exc:  # e.g. file meta that cannot be encoded: not stored, so not "success"
            return self._refuse(event, STATUS_OUT_OF_RESOURCES, f"cannot store ({type(exc).__name__})")
        self.state.count("received")
        LOG.info(
            "received %s sop=%s (%s) from %s, %.1f MiB, stored in %.0f ms",
            path.stem,
            sop_uid,
            uid_hash(sop_uid),
            self._caller(event),
            len(data) / 2**20,
            (time.perf_counter() - t0) * 1000.0,
        )
        return STATUS_SUCCESS

    def _header(self, event: Any) -> Dataset:
        """The received dataset for the header checks; a deflated one is inflated as a bounded stream.

        Raises:
            _TooLarge: a deflated dataset inflates beyond ``max_dataset_mb``.
        """
        if str(event.context.transfer_syntax) != DeflatedExplicitVRLittleEndian:
            return event.dataset
        from pydicom.filereader import read_dataset

        raw = event.request.DataSet
        data = raw.getbuffer() if isinstance(raw, io.BytesIO) else raw.read()
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        head = bytearray()
        total = 0
        view = memoryview(data)
        for start in range(0, len(view), 1 << 16):
            chunk = view[start : start + (1 << 16)]
            while chunk:
                out = inflater.decompress(chunk, 1 << 20)
                chunk = inflater.unconsumed_tail
                total += len(out)
                if total > self.max_dataset_bytes:
                    raise _TooLarge
                if len(head) < _HEADER_BYTES:
                    head += out[: _HEADER_BYTES - len(head)]
            if inflater.eof:
                break
        ds = read_dataset(io.BytesIO(bytes(head)), is_implicit_VR=False, is_little_endian=True, stop_when=_at_pixels)
        # The header ends where Pixel Data starts (or the kept head ends): note whether it was there.
        ds.bcedge_has_pixels = _PIXEL_TAG in bytes(head)
        return ds


#: Inflated bytes kept for the header checks (the elements before Pixel Data are a few kB).
_HEADER_BYTES = 4 * 2**20
_PIXEL_TAG = b"\xe0\x7f\x10\x00"


def _at_pixels(tag: Any, vr: Any, length: Any) -> bool:
    return int(tag) >= 0x7FE00010


class _TooLarge(Exception):
    """A deflated dataset inflates beyond the limit."""


class _Sink(io.BytesIO):
    """Stands in for a message's dataset buffer once it is over the limit: keeps nothing.

    A BytesIO (pynetdicom checks the type when it hands the dataset to the C-STORE handler),
    whose writes are dropped.
    """

    def write(self, data: Any) -> int:  # type: ignore[override]
        return len(data)
