//! The sample domain and networks rendered by the golden and schema tests and
//! by the `render` example, and defined by `paddock-libvirt`'s test-driver
//! tests (which include this file by path).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use paddock_spec::{
    Acceleration, AgentChannel, Boot, DomainRole, DomainSpec, ImageFormat, MacAddress, NetworkKind,
    NetworkMode, NetworkSpec, OverlayDisk, PaddockMetadata, Profile, Uuid, VsockCid,
};

/// Network modes, as the example's `--network` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Net {
    /// On Paddock's NAT network behind the egress filter.
    NatFiltered,
    /// No interface.
    Isolated,
    /// On a host bridge.
    Bridge,
}

/// Agent channels, as the example's `--channel` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Chan {
    /// Kernel vsock.
    Vsock,
    /// virtio-serial port.
    VirtioSerial,
    /// vhost-user vsock.
    HybridVsock,
}

/// Paddock's NAT network as the samples use it.
pub fn network(kind: NetworkKind) -> NetworkSpec {
    let (name, bridge, third) = match kind {
        NetworkKind::Nat => ("paddock-nat", "pdk-nat0", 0),
        NetworkKind::Isolated => ("paddock-isolated", "pdk-iso0", 1),
    };
    NetworkSpec {
        name: name.into(),
        bridge: bridge.into(),
        kind,
        subnet: Ipv4Addr::new(10, 213, third, 0),
        slots: 4,
    }
}

/// A light, TCG, kernel-booted domain with a disk overlay, for slot 3.
pub fn domain(net: Net, chan: Chan) -> DomainSpec {
    let run = PathBuf::from("/run/paddock/pool-web/3");
    let slot = 3;
    let profile = Profile::Light;
    DomainSpec {
        name: "paddock-web-3".into(),
        uuid: Uuid::from_u128(0x5ad0_c0de_0000_4000_8000_0000_0000_0003),
        metadata: PaddockMetadata {
            pool: "web".into(),
            role: DomainRole::Slot(slot),
            image: "debian-12-agent".into(),
            golden: Some("web-golden-1".into()),
            created_unix: 1_767_225_600,
        },
        profile,
        tuning: profile.tuning(),
        acceleration: Acceleration::Tcg,
        boot: Boot::Kernel {
            kernel: "/var/lib/paddock/images/debian-12-agent/vmlinuz".into(),
            initrd: Some("/var/lib/paddock/images/debian-12-agent/initrd.img".into()),
            cmdline: "console=ttyS0 panic=-1 quiet".into(),
        },
        disk: Some(OverlayDisk {
            overlay: run.join("disk.qcow2"),
            base: "/var/lib/paddock/images/debian-12-agent/rootfs.qcow2".into(),
            base_format: ImageFormat::Qcow2,
        }),
        console_log: run.join("console.log"),
        channel: match chan {
            Chan::Vsock => AgentChannel::Vsock(VsockCid::Auto),
            Chan::VirtioSerial => AgentChannel::VirtioSerial {
                socket: run.join("agent.sock"),
                name: "org.paddock.agent.0".into(),
            },
            Chan::HybridVsock => AgentChannel::HybridVsock {
                socket: run.join("vhost-vsock.sock"),
            },
        },
        network: match net {
            Net::NatFiltered => NetworkMode::NatFiltered(
                network(NetworkKind::Nat)
                    .attachment(3, "paddock-egress")
                    .expect("slot 3 of 4 exists"),
            ),
            Net::Isolated => NetworkMode::Isolated,
            Net::Bridge => NetworkMode::Bridge {
                bridge: "br0".into(),
                mac: MacAddress([0x52, 0x54, 0x00, 0xbe, 0xef, 0x03]),
            },
        },
        run_as: None,
        filesystems: Vec::new(),
        serial_ports: Vec::new(),
    }
}
