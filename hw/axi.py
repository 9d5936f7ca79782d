"""AXI4 and AXI4-Lite interface signatures, as the Vitis shell expects them.

Member names are the AXI signal names in lower case (``awvalid``, ``rdata``, ...), with no
prefix, so a thin top-level wrapper can emit the flat names Vitis wants (for instance
``s_axi_control_AWVALID`` or ``m_axi_hbm0_ARADDR``) by prefixing and upper-casing them.

Each signature is written from one side of the link, stated in its docstring:

* :func:`axi4_lite_signature` from the **slave** side (``awvalid`` is an input). A slave
  component declares it as ``Out(axi4_lite_signature(...))``; a master declares
  ``In(axi4_lite_signature(...))``.
* :func:`axi4_signature` from the **master** side (``awvalid`` is an output). A master
  component declares it as ``Out(axi4_signature(...))``; a slave declares
  ``In(axi4_signature(...))``.
"""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "BOUNDARY",
    "BURST_INCR",
    "MAX_BURST_BEATS",
    "RESP_DECERR",
    "RESP_EXOKAY",
    "RESP_OKAY",
    "RESP_SLVERR",
    "axi4_lite_signature",
    "axi4_signature",
    "beats_to_boundary",
]

#: ``xRESP``: normal access success.
RESP_OKAY = 0
#: ``xRESP``: exclusive access success (never produced by flightgen).
RESP_EXOKAY = 1
#: ``xRESP``: the slave was reached but reports an error.
RESP_SLVERR = 2
#: ``xRESP``: no slave at the address (decode error).
RESP_DECERR = 3

#: ``AxBURST``: incrementing burst, the only kind flightgen issues.
BURST_INCR = 1

#: Most beats in one AXI4 incrementing burst (``AxLEN`` is 8 bits: beats = ``AxLEN + 1``).
MAX_BURST_BEATS = 256

#: Address boundary, in bytes, that no AXI4 burst may cross: all the bytes of a burst lie in one
#: 4 KiB-aligned block (AXI4 specification, A3.4.1).
BOUNDARY = 4096


def beats_to_boundary(address, size):
    """Beats of ``2**size`` bytes from ``address`` (a beat-aligned byte address, an Amaranth
    value) to the next 4 KiB boundary: the longest burst that may start there."""
    return (BOUNDARY >> size) - address[size:12]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_addr_width(addr_width):
    if not _is_int(addr_width) or not 12 <= addr_width <= 64:
        raise ValueError(f"AXI address width must be from 12 to 64, not {addr_width!r}")


def axi4_lite_signature(addr_width, data_width=32):
    """Signature of an AXI4-Lite link, seen from the **slave**.

    Parameters
    ----------
    addr_width : int
        Address bits, 12 to 64 (Vitis uses 12 for the control port of a small kernel).
    data_width : int
        Data bits, 32 or 64.

    Members
    -------
    awvalid : In(1)
    awready : Out(1)
    awaddr : In(addr_width)
        Write address channel.
    wvalid : In(1)
    wready : Out(1)
    wdata : In(data_width)
    wstrb : In(data_width // 8)
        Write data channel; bit ``k`` of ``wstrb`` enables byte ``k`` of ``wdata``.
    bvalid : Out(1)
    bready : In(1)
    bresp : Out(2)
        Write response channel (``RESP_*``).
    arvalid : In(1)
    arready : Out(1)
    araddr : In(addr_width)
        Read address channel.
    rvalid : Out(1)
    rready : In(1)
    rdata : Out(data_width)
    rresp : Out(2)
        Read data channel.

    Raises
    ------
    ValueError
        If ``addr_width`` is not from 12 to 64, or ``data_width`` is not 32 or 64.
    """
    _check_addr_width(addr_width)
    if not _is_int(data_width) or data_width not in (32, 64):
        raise ValueError(f"AXI4-Lite data width must be 32 or 64, not {data_width!r}")
    return wiring.Signature({
        "awvalid": In(1),
        "awready": Out(1),
        "awaddr": In(addr_width),
        "wvalid": In(1),
        "wready": Out(1),
        "wdata": In(data_width),
        "wstrb": In(data_width // 8),
        "bvalid": Out(1),
        "bready": In(1),
        "bresp": Out(2),
        "arvalid": In(1),
        "arready": Out(1),
        "araddr": In(addr_width),
        "rvalid": Out(1),
        "rready": In(1),
        "rdata": Out(data_width),
        "rresp": Out(2),
    })


def axi4_signature(addr_width, data_width, id_width=1):
    """Signature of a full AXI4 link, seen from the **master**.

    Parameters
    ----------
    addr_width : int
        Address bits, 12 to 64.
    data_width : int
        Data bits: a power of two from 32 to 1024.
    id_width : int
        Transaction ID bits, 1 to 32.

    Members
    -------
    awvalid, awready, awaddr, awlen, awsize, awburst, awid, awcache, awprot, awlock, awqos
        Write address channel: ``awvalid`` Out(1), ``awready`` In(1), ``awaddr``
        Out(addr_width), ``awlen`` Out(8) (beats less one), ``awsize`` Out(3) (log2 of the
        bytes per beat), ``awburst`` Out(2) (:data:`BURST_INCR`), ``awid`` Out(id_width),
        ``awcache`` Out(4), ``awprot`` Out(3), ``awlock`` Out(1), ``awqos`` Out(4).
    wvalid, wready, wdata, wstrb, wlast
        Write data channel: ``wvalid`` Out(1), ``wready`` In(1), ``wdata`` Out(data_width),
        ``wstrb`` Out(data_width // 8), ``wlast`` Out(1).
    bvalid, bready, bresp, bid
        Write response channel: ``bvalid`` In(1), ``bready`` Out(1), ``bresp`` In(2),
        ``bid`` In(id_width).
    arvalid, arready, araddr, arlen, arsize, arburst, arid, arcache, arprot, arlock, arqos
        Read address channel, as the write address channel.
    rvalid, rready, rdata, rresp, rlast, rid
        Read data channel: ``rvalid`` In(1), ``rready`` Out(1), ``rdata`` In(data_width),
        ``rresp`` In(2), ``rlast`` In(1), ``rid`` In(id_width).

    Raises
    ------
    ValueError
        If a width is out of range.
    """
    _check_addr_width(addr_width)
    if not _is_int(data_width) or not 32 <= data_width <= 1024 or data_width & (data_width - 1):
        raise ValueError(f"AXI data width must be a power of two from 32 to 1024, "
                         f"not {data_width!r}")
    if not _is_int(id_width) or not 1 <= id_width <= 32:
        raise ValueError(f"AXI ID width must be from 1 to 32, not {id_width!r}")
    return wiring.Signature({
        **_address_channel("aw", addr_width, id_width),
        "wvalid": Out(1),
        "wready": In(1),
        "wdata": Out(data_width),
        "wstrb": Out(data_width // 8),
        "wlast": Out(1),
        "bvalid": In(1),
        "bready": Out(1),
        "bresp": In(2),
        "bid": In(id_width),
        **_address_channel("ar", addr_width, id_width),
        "rvalid": In(1),
        "rready": Out(1),
        "rdata": In(data_width),
        "rresp": In(2),
        "rlast": In(1),
        "rid": In(id_width),
    })


def _address_channel(prefix, addr_width, id_width):
    """Members of the AW or AR channel of an AXI4 master."""
    return {
        f"{prefix}valid": Out(1),
        f"{prefix}ready": In(1),
        f"{prefix}addr": Out(addr_width),
        f"{prefix}len": Out(8),
        f"{prefix}size": Out(3),
        f"{prefix}burst": Out(2),
        f"{prefix}id": Out(id_width),
        f"{prefix}cache": Out(4),
        f"{prefix}prot": Out(3),
        f"{prefix}lock": Out(1),
        f"{prefix}qos": Out(4),
    }
