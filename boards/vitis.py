"""The core as a Vitis RTL kernel: the flat top, ``kernel.xml``, the packaging Tcl, ``link.cfg``
and the Makefile.

:class:`VitisKernel` wraps :class:`flightgen.hw.Core` with the port names Vivado's IP packager
and v++ expect: ``ap_clk``, ``ap_rst_n`` (active low, registered twice inside), ``interrupt``,
``s_axi_control_<SIGNAL>`` and one AXI4 master per memory port, ``m_axi_program_<SIGNAL>`` and
``m_axi_hbm<p>_<SIGNAL>`` (64-bit addresses, the core's line width), and for a core with the
barrier ``m_axi_sync_<SIGNAL>``, its barrier engine's master, on the exchange port's HBM
channel (its pointer argument ``sync`` is the exchange port's buffer). Amaranth would join a
nested interface's names with a double underscore, which the packager does not recognise, so
every port is a flat member. The core's simulation outputs (``retire``, ``dispatched``,
``buffer_writes``) are not ports of the kernel.

The text files come from the same sources of truth as the hardware: the register map
(:func:`flightgen.hw.core.register_map`) gives ``kernel.xml``'s arguments and offsets, the
:class:`~flightgen.boards.alveo.Board` the pseudo-channels and SLRs of ``link.cfg``.
"""

from amaranth import ClockDomain, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["VitisKernel", "KERNEL_NAME", "kernel_xml", "link_cfg", "package_tcl", "makefile",
           "channel_map"]

#: The kernel's name in v++ (``nk=``), kernel.xml and the host.
KERNEL_NAME = "flightgen_core"


def _masters(config):
    """The kernel's AXI4 masters: ``m_axi_program``, ``m_axi_hbm0``.., and ``m_axi_sync`` for
    a core with the barrier."""
    return ["m_axi_program", *(f"m_axi_hbm{p}" for p in range(config.hbm_ports)),
            *(["m_axi_sync"] if config.barrier else [])]


def _port_name(path):
    """The Vitis name of a flattened Core port, or None for a simulation-only output."""
    head = path[0]
    if head == "control":
        return f"s_axi_control_{path[1].upper()}"
    if head == "program":
        return f"m_axi_program_{path[1].upper()}"
    if head == "hbm":
        return f"m_axi_hbm{path[1]}_{path[2].upper()}"
    if head == "sync":
        return f"m_axi_sync_{path[1].upper()}"
    if head == "irq":
        return "interrupt"
    return None


class VitisKernel(wiring.Component):
    """The core with Vitis port names (see the module's docstring).

    Parameters
    ----------
    config : flightgen.isa.machine.CoreConfig
    """

    def __init__(self, config):
        from flightgen.hw.core import Core

        self.config = config
        self._core = Core(config)
        members = {"ap_clk": In(1), "ap_rst_n": In(1)}
        self._links = []
        for path, member, _ in self._core.signature.flatten(self._core):
            name = _port_name(path)
            if name is None:
                continue
            members[name] = Out(member.shape) if member.flow == Out else In(member.shape)
            self._links.append((path, name, member.flow))
        super().__init__(members)

    @property
    def bus_names(self):
        """The AXI bus interfaces: ``s_axi_control``, ``m_axi_program``, ``m_axi_hbm0``...
        (and ``m_axi_sync`` with the barrier)."""
        return ["s_axi_control", *_masters(self.config)]

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain()
        m.domains.raw = raw = ClockDomain(reset_less=True)
        m.d.comb += [sync.clk.eq(self.ap_clk), raw.clk.eq(self.ap_clk)]
        # the reset, registered twice (UG1393 recommends pipelining ap_rst_n inside the kernel)
        first, second = Signal(init=1), Signal(init=1)
        m.d.raw += [first.eq(~self.ap_rst_n), second.eq(first)]
        m.d.comb += sync.rst.eq(second)
        m.submodules.core = core = self._core
        values = {path: value for path, _, value in core.signature.flatten(core)}
        for path, name, flow in self._links:
            port = getattr(self, name)
            if flow == Out:
                m.d.comb += port.eq(values[path])
            else:
                m.d.comb += values[path].eq(port)
        return m


def channel_map(board, target):
    """``[[channel of port p of core c, ...], ...]`` of ``target`` (a
    :class:`flightgen.compiler.target.Target`: consecutive pseudo-channels per core, and on a
    tensor-parallel target every core's exchange port on the one channel after them), checked
    against the channels ``board`` has."""
    if target.channels > board.hbm.channels:
        from flightgen.errors import FlightgenError

        raise FlightgenError(f"{target.cores} cores x {target.core.hbm_ports} HBM ports need "
                             f"{target.channels} pseudo-channels; the {board.name} has "
                             f"{board.hbm.channels}")
    return [[target.channel(c, p) for p in range(target.core.hbm_ports)]
            for c in range(target.cores)]


def kernel_xml(config, registers):
    """``kernel.xml`` for :class:`VitisKernel` with ``config`` and its register map."""
    from xml.sax.saxutils import quoteattr

    width = config.line_bits
    span = 1 << registers.addr_width
    ports = [f'      <port name="s_axi_control" mode="slave" range="{span:#x}" '
             f'dataWidth="32" portType="addressable" base="0x0"/>']
    for bus in _masters(config):
        ports.append(f'      <port name="{bus}" mode="master" range="0xFFFFFFFFFFFFFFFF" '
                     f'dataWidth="{width}" portType="addressable" base="0x0"/>')
    args = []
    index = 0
    for register in registers.registers:
        if register.kind == "pointer":
            port = "m_axi_program" if register.name == "program" else f"m_axi_{register.name}"
            qualifier, ctype = 1, "void*"
        elif register.kind == "scalar":
            port, qualifier, ctype = "s_axi_control", 0, "uint"
        else:
            continue
        args.append(f'      <arg name={quoteattr(register.name)} addressQualifier="{qualifier}" '
                    f'id="{index}" port="{port}" size="{register.size_bytes:#x}" '
                    f'offset="{register.offset:#x}" hostOffset="0x0" '
                    f'hostSize="{register.size_bytes:#x}" type="{ctype}"/>')
        index += 1
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<root versionMajor="1" versionMinor="6">',
        f'  <kernel name="{KERNEL_NAME}" language="ip_c" '
        f'vlnv="flightgen.org:kernel:{KERNEL_NAME}:1.0" attributes="" '
        f'preferredWorkGroupSizeMultiple="0" workGroupSize="1" interrupt="true" '
        f'hwControlProtocol="ap_ctrl_hs">',
        "    <ports>", *ports, "    </ports>",
        "    <args>", *args, "    </args>",
        "  </kernel>",
        "</root>",
        "",
    ])


def package_tcl(config, top_file):
    """Vivado batch Tcl: package ``top_file`` (the kernel's Verilog) as an IP with its bus
    interfaces on ``ap_clk``, then ``package_xo`` with ``kernel.xml``. Run from the build
    folder: ``vivado -mode batch -source package_kernel.tcl``."""
    buses = ["s_axi_control", *_masters(config)]
    lines = [
        f"# Package {KERNEL_NAME} as a Vitis RTL kernel (generated by flightgen hw).",
        "set root [file normalize [file dirname [info script]]]",
        "set ip_dir $root/ip",
        f"create_project -force {KERNEL_NAME}_package $root/vivado_package -part [lindex $argv 0]",
        f"add_files -norecurse $root/{top_file}",
        f"set_property top {KERNEL_NAME} [current_fileset]",
        "update_compile_order -fileset sources_1",
        "ipx::package_project -root_dir $ip_dir -vendor flightgen.org -library kernel "
        "-taxonomy /KernelIP -import_files -set_current false",
        "ipx::unload_core $ip_dir/component.xml",
        "ipx::edit_ip_in_project -upgrade true -name tmp_edit_project -directory $ip_dir "
        "$ip_dir/component.xml",
        "set core [ipx::current_core]",
        "set_property core_revision 1 $core",
        "foreach up [ipx::get_user_parameters] {",
        "    ipx::remove_user_parameter [get_property NAME $up] $core",
        "}",
        "ipx::associate_bus_interfaces -busif s_axi_control -clock ap_clk $core",
    ]
    for bus in buses[1:]:
        lines.append(f"ipx::associate_bus_interfaces -busif {bus} -clock ap_clk $core")
    lines += [
        "ipx::associate_bus_interfaces -clock ap_clk -reset ap_rst_n $core",
        "set_property xpm_libraries {XPM_CDC XPM_MEMORY XPM_FIFO} $core",
        "set_property sdx_kernel true $core",
        "set_property sdx_kernel_type rtl $core",
        "set_property supported_families { } $core",
        "set_property auto_family_support_level level_2 $core",
        "ipx::create_xgui_files $core",
        "ipx::update_checksums $core",
        "ipx::check_integrity -kernel $core",
        "ipx::save_core $core",
        "close_project -delete",
        f"package_xo -force -xo_path $root/{KERNEL_NAME}.xo -kernel_name {KERNEL_NAME} "
        "-ip_directory $ip_dir -kernel_xml $root/kernel.xml",
        "",
    ]
    return "\n".join(lines)


def link_cfg(board, target):
    """``link.cfg`` for v++ --link: the ``target``'s cores as instances of the kernel,
    instance ``c`` in SLR ``c``, its ``m_axi_hbm<p>`` on its pseudo-channels
    (:func:`channel_map`) and its program on its first; a core with the barrier
    (``CoreConfig.barrier``) has its ``m_axi_sync`` on the channel of its exchange port (the
    last: the channel the group shares)."""
    channels = channel_map(board, target)
    cores, barrier = target.cores, target.core.barrier
    names = [f"{KERNEL_NAME}_{c}" for c in range(cores)]
    lines = ["# v++ link configuration (generated by flightgen hw)", "[connectivity]",
             f"nk={KERNEL_NAME}:{cores}:{'.'.join(names)}"]
    for c, name in enumerate(names):
        lines.append(f"slr={name}:SLR{c % len(board.slrs)}")
        lines.append(f"sp={name}.m_axi_program:HBM[{channels[c][0]}]")
        for p, channel in enumerate(channels[c]):
            lines.append(f"sp={name}.m_axi_hbm{p}:HBM[{channel}]")
        if barrier:
            lines.append(f"sp={name}.m_axi_sync:HBM[{channels[c][-1]}]")
    lines += ["", "[vivado]",
              "prop=run.impl_1.STEPS.OPT_DESIGN.ARGS.DIRECTIVE=Explore",
              "prop=run.impl_1.STEPS.PLACE_DESIGN.ARGS.DIRECTIVE=Explore", ""]
    return "\n".join(lines)


def makefile(board):
    """The Makefile: package the kernel (Vivado) and link it (v++) for ``board``."""
    mhz = int(board.kernel_mhz)
    return "\n".join([
        "# Build the flightgen xclbin (generated by flightgen hw). Needs Vivado and Vitis on",
        "# PATH and the platform installed; nothing here was run by flightgen.",
        f"PLATFORM ?= {board.platform}",
        f"PART ?= {board.part}",
        f"KERNEL_MHZ ?= {mhz}",
        "",
        "all: flightgen.xclbin",
        "",
        f"{KERNEL_NAME}.xo: {KERNEL_NAME}.v kernel.xml package_kernel.tcl",
        "\tvivado -mode batch -nojournal -nolog -source package_kernel.tcl -tclargs $(PART)",
        "",
        f"flightgen.xclbin: {KERNEL_NAME}.xo link.cfg",
        "\tv++ -t hw --platform $(PLATFORM) --link --config link.cfg "
        "--kernel_frequency $(KERNEL_MHZ) -o $@ $<",
        "",
        "clean:",
        f"\trm -rf {KERNEL_NAME}.xo flightgen.xclbin ip vivado_package _x .Xil *.log",
        "",
        ".PHONY: all clean",
        "",
    ])
