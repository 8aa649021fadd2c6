//! The typed description of a Paddock domain: [`DomainSpec`] and its parts.
//!
//! A spec is plain data; [`crate::render_domain`] turns it into libvirt domain
//! XML. Nothing here talks to libvirt; only [`Acceleration::Auto`] looks at the
//! host (once per process).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::OnceLock;

use uuid::Uuid;

/// The XML namespace of Paddock's `<metadata>` element in domain XML.
pub const METADATA_NAMESPACE: &str = "https://paddock.dev/xmlns/domain/1";

/// Everything Paddock decides about one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    /// Domain name, unique on the host.
    pub name: String,
    /// Domain UUID, unique on the host.
    pub uuid: Uuid,
    /// What the domain is, recorded in its XML for crash recovery.
    pub metadata: PaddockMetadata,
    /// vCPUs and memory.
    pub profile: Profile,
    /// cgroup limits; [`Profile::tuning`] gives the defaults.
    pub tuning: Tuning,
    /// KVM or TCG.
    pub acceleration: Acceleration,
    /// How the guest boots.
    pub boot: Boot,
    /// The guest's disk, if it has one. Internal snapshots need one (the memory
    /// state is stored in it); [`Boot::Disk`] boots from it.
    pub disk: Option<OverlayDisk>,
    /// The file the serial console is written to.
    pub console_log: PathBuf,
    /// How the host reaches the guest agent.
    pub channel: AgentChannel,
    /// The guest's network.
    pub network: NetworkMode,
    /// The host user and group QEMU runs as, instead of libvirt's (user
    /// `libvirt-qemu`); `None` keeps libvirt's.
    pub run_as: Option<DacLabel>,
    /// Host directories exported to the guest over virtiofs
    /// ([`crate::share`]); with any, the guest's memory is shared and
    /// QEMU cannot save or snapshot the domain.
    pub filesystems: Vec<crate::share::FilesystemDevice>,
    /// Virtio-serial ports besides the agent's, each backed by a Unix socket
    /// that libvirt binds (the floor probes' raw byte streams use one).
    pub serial_ports: Vec<SerialPort>,
}

/// A virtio-serial port backed by a Unix socket that libvirt binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    /// The host-side socket.
    pub socket: PathBuf,
    /// The port name the guest sees in `/sys/class/virtio-ports/*/name`.
    pub name: String,
}

/// A host user and group for a domain's QEMU: libvirt's static DAC label,
/// rendered as `<seclabel type='static' model='dac' relabel='no'>`.
///
/// libvirt changes the owner of no file for it (`relabel='no'`): with
/// `relabel='yes'` it would chown the image's kernel and initramfs, which
/// every pool shares, and refuses ("already in use") while a domain of
/// another user runs from them. So the files QEMU opens by path must be
/// readable by the user (the image's are world-readable) and its writable
/// ones (disk overlays) handed to it by the caller; libvirt opens the
/// console log, the agent socket and saved images itself and passes them
/// to QEMU. The user must be in the `libvirt-qemu` group: QEMU reads its
/// per-domain files under `/var/lib/libvirt/qemu`, which is `0750
/// libvirt-qemu:libvirt-qemu` on Debian, and libvirt gives QEMU the user's
/// groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DacLabel {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

/// What a domain is, as far as Paddock is concerned. Stored in the domain's
/// `<metadata>` in the [`METADATA_NAMESPACE`] namespace and read back with
/// [`crate::parse_metadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddockMetadata {
    /// The pool the domain belongs to.
    pub pool: String,
    /// What it is in that pool.
    pub role: DomainRole,
    /// The guest image it runs.
    pub image: String,
    /// The golden snapshot or saved image it was reset or restored from, if any.
    pub golden: Option<String>,
    /// When it was created, in seconds since the Unix epoch.
    pub created_unix: u64,
}

/// What a Paddock domain is to its pool. Stored as the metadata's `role`
/// attribute (`sandbox`, `golden` or `slot`, with `slot="<n>"` for a slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainRole {
    /// A single sandbox, outside any pool's slots.
    Sandbox,
    /// A pool's golden template, while it is booted, warmed up and captured.
    Golden,
    /// Slot `n` of its pool.
    Slot(u32),
}

impl DomainRole {
    /// The slot's number, for a slot.
    #[must_use]
    pub fn slot(self) -> Option<u32> {
        match self {
            Self::Slot(n) => Some(n),
            Self::Sandbox | Self::Golden => None,
        }
    }
}

/// vCPUs and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Number of vCPUs (at least 1).
    pub vcpus: u32,
    /// Guest memory in MiB (at least 1).
    pub memory_mib: u64,
}

/// A resource profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// 1 vCPU, 512 MiB.
    Light,
    /// 2 vCPUs, 2 GiB.
    Standard,
    /// 4 vCPUs, 8 GiB.
    Intensive,
    /// Anything else.
    Custom(Resources),
}

/// Memory a QEMU process needs besides guest RAM and the TCG translation
/// cache, per domain: its heap, libraries, device state and buffers.
/// Measured here (QEMU 7.2, TCG, 1 vCPU, 256 MiB guest, idle after boot,
/// median of three): 373 MiB resident, of which 256 MiB guest RAM (the
/// guest kernel's `init_on_free=1` touches all of it at boot) and 54 MiB
/// translated code, leaving 63 MiB (38 MiB anonymous, 25 MiB mapped
/// files); with the translation cache full, 30 MiB of anonymous memory
/// besides RAM and cache. This doubles the idle figure for transient
/// buffers (snapshots, saves, disk I/O).
pub const QEMU_OVERHEAD_MIB: u64 = 128;

/// Memory a QEMU process needs per vCPU besides [`QEMU_OVERHEAD_MIB`]: the
/// vCPU thread's stack and its software TLB, which grows with the guest's
/// working set. A second vCPU added 3.4 MiB to an idle guest here.
pub const QEMU_OVERHEAD_PER_VCPU_MIB: u64 = 16;

/// The default TCG translation cache (`<features><tcg><tb-cache>`). QEMU's
/// own default here is 1 GiB (an eighth of host memory, at most 1 GiB),
/// which it may fill and keep resident; the busybox guest's boot and every
/// busybox applet translated 55-61 MiB, so 256 MiB leaves room for larger
/// guest programs while bounding QEMU's memory four times tighter.
pub const TCG_TB_CACHE_MIB: u64 = 256;

/// Threads a QEMU process may need besides one per vCPU: the main loop, RCU,
/// the monitor's I/O thread, migration (saves and snapshots) and a block
/// thread pool of up to 64 workers (QEMU 7.2's fixed maximum). An idle
/// 1-vCPU guest here has 4 threads, 7 under parallel disk writes.
pub const QEMU_THREADS: u32 = 128;

impl Profile {
    /// The profile's vCPUs and memory.
    #[must_use]
    pub fn resources(self) -> Resources {
        match self {
            Self::Light => Resources {
                vcpus: 1,
                memory_mib: 512,
            },
            Self::Standard => Resources {
                vcpus: 2,
                memory_mib: 2048,
            },
            Self::Intensive => Resources {
                vcpus: 4,
                memory_mib: 8192,
            },
            Self::Custom(resources) => resources,
        }
    }

    /// Default limits, all derived from the vCPUs and memory:
    ///
    /// - CPU: a weight of 1024 per vCPU, and a hard cap of `vcpus` host
    ///   CPUs for the whole QEMU process (emulator and I/O threads
    ///   included), so a guest never uses more than its vCPUs' worth;
    /// - memory: a hard limit of guest RAM plus the TCG translation cache
    ///   ([`TCG_TB_CACHE_MIB`], bounded by the domain's `<tb-cache>`) plus
    ///   [`QEMU_OVERHEAD_MIB`] and [`QEMU_OVERHEAD_PER_VCPU_MIB`] per vCPU.
    ///   Under KVM the cache is not used and stays as slack;
    /// - threads: `pids.max` of [`QEMU_THREADS`] plus one per vCPU;
    /// - a block I/O weight growing with the vCPUs.
    #[must_use]
    pub fn tuning(self) -> Tuning {
        let Resources { vcpus, memory_mib } = self.resources();
        let period_us = 100_000;
        Tuning {
            cpu_shares: Some(vcpus.saturating_mul(1024)),
            cpu_quota: Some(CpuQuota {
                period_us,
                quota_us: u64::from(vcpus).saturating_mul(period_us),
            }),
            memory_hard_limit_mib: Some(
                memory_mib
                    .saturating_add(TCG_TB_CACHE_MIB)
                    .saturating_add(QEMU_OVERHEAD_MIB)
                    .saturating_add(u64::from(vcpus).saturating_mul(QEMU_OVERHEAD_PER_VCPU_MIB)),
            ),
            memory_soft_limit_mib: None,
            blkio_weight: Some(
                u16::try_from(vcpus.saturating_mul(250))
                    .unwrap_or(1000)
                    .clamp(100, 1000),
            ),
            pids_max: Some(QEMU_THREADS.saturating_add(vcpus)),
            tcg_tb_cache_mib: Some(TCG_TB_CACHE_MIB),
        }
    }
}

/// Limits on a domain's QEMU process. `None` leaves a limit unset.
///
/// libvirt applies the CPU, soft memory and block I/O limits (rendered as
/// `<cputune>`, `<memtune>` and `<blkiotune>`) and the translation cache
/// size (`<features><tcg>`). The memory hard limit and the thread limit are
/// not in the domain XML: `paddock-libvirt`'s `Vm::confine` writes them
/// into the domain's cgroups after each QEMU start. libvirt 9.0 has no
/// thread (pids) tunable, and its `<hard_limit>` also raises QEMU's
/// `RLIMIT_MEMLOCK` to the limit, which needs `CAP_SYS_RESOURCE` that
/// libvirtd lacks in a container (this project's CI): the domain would not
/// start ("cannot limit locked memory").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Relative CPU weight (`<cputune><shares>`).
    pub cpu_shares: Option<u32>,
    /// CPU bandwidth cap for the whole domain (`<global_period>`, `<global_quota>`).
    pub cpu_quota: Option<CpuQuota>,
    /// Memory hard limit in MiB of the domain's memory cgroup
    /// (`memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` where
    /// swap is accounted; `memory.max` on cgroup v2): QEMU's whole
    /// footprint, guest RAM included. Beyond it the kernel reclaims QEMU's
    /// page cache, then kills QEMU. Applied after start, not rendered.
    pub memory_hard_limit_mib: Option<u64>,
    /// Memory soft limit in MiB (`<memtune><soft_limit>`).
    pub memory_soft_limit_mib: Option<u64>,
    /// Relative block I/O weight, 100..=1000 (`<blkiotune><weight>`).
    pub blkio_weight: Option<u16>,
    /// Most threads the QEMU process may have (`pids.max` of a pids cgroup
    /// holding it). QEMU runs with `-sandbox ...,spawn=deny`, so it cannot
    /// fork: this bounds its threads. Applied after start, not rendered.
    pub pids_max: Option<u32>,
    /// The TCG translation cache in MiB (`<features><tcg><tb-cache>`);
    /// rendered only for a domain that runs under TCG.
    pub tcg_tb_cache_mib: Option<u64>,
}

impl Tuning {
    /// Whether a limit must be written into the domain's cgroups after
    /// QEMU starts (the memory hard limit or the thread limit).
    #[must_use]
    pub fn has_cgroup_limits(&self) -> bool {
        self.memory_hard_limit_mib.is_some() || self.pids_max.is_some()
    }
}

/// A CPU bandwidth cap: `quota_us` of CPU time per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// Period in microseconds (1000..=1000000).
    pub period_us: u64,
    /// CPU time allowed per period in microseconds (at least 1000).
    pub quota_us: u64,
}

impl CpuQuota {
    /// A cap of `percent` per cent of one host CPU, over libvirt's default
    /// period of 100 ms (`percent` 50 is half a CPU, 200 two CPUs).
    #[must_use]
    pub fn percent_of_one_cpu(percent: u32) -> Self {
        let period_us = 100_000;
        Self {
            period_us,
            quota_us: u64::from(percent).saturating_mul(period_us) / 100,
        }
    }
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Acceleration {
    /// Hardware virtualisation (`<domain type='kvm'>`).
    Kvm,
    /// QEMU's emulator (`<domain type='qemu'>`).
    Tcg,
    /// KVM when `/dev/kvm` exists and the CPU flags show `vmx` or `svm`, TCG
    /// otherwise (a paravirtualised `/dev/kvm` without those flags hangs guests).
    #[default]
    Auto,
}

impl Acceleration {
    /// [`Acceleration::Kvm`] or [`Acceleration::Tcg`]; `Auto` probes the host
    /// once per process.
    #[must_use]
    pub fn resolve(self) -> Self {
        static HOST_KVM: OnceLock<bool> = OnceLock::new();
        match self {
            Self::Auto => {
                let kvm = *HOST_KVM.get_or_init(|| {
                    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                    kvm_usable(std::path::Path::new("/dev/kvm").exists(), &cpuinfo)
                });
                if kvm { Self::Kvm } else { Self::Tcg }
            }
            other => other,
        }
    }

    /// The `type` attribute of `<domain>`.
    #[must_use]
    pub fn domain_type(self) -> &'static str {
        match self.resolve() {
            Self::Kvm => "kvm",
            _ => "qemu",
        }
    }
}

/// Whether KVM can run guests: the device exists and some CPU advertises
/// `vmx` (Intel) or `svm` (AMD) in `/proc/cpuinfo`.
#[must_use]
pub fn kvm_usable(dev_kvm_exists: bool, cpuinfo: &str) -> bool {
    dev_kvm_exists
        && cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| {
                line.split_whitespace()
                    .any(|flag| flag == "vmx" || flag == "svm")
            })
}

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Direct kernel boot.
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// The initramfs, if any.
        initrd: Option<PathBuf>,
        /// The kernel command line.
        cmdline: String,
    },
    /// The firmware (SeaBIOS) boots [`DomainSpec::disk`].
    Disk,
}

/// A qcow2 overlay on a base image that is never written (`paddock-libvirt`'s
/// `overlay` module makes and removes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayDisk {
    /// The qcow2 overlay the guest writes to.
    pub overlay: PathBuf,
    /// The read-only base image.
    pub base: PathBuf,
    /// The base image's format.
    pub base_format: ImageFormat,
}

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Raw bytes.
    Raw,
    /// QEMU's qcow2.
    Qcow2,
}

impl ImageFormat {
    /// The name QEMU and libvirt use.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// How the host reaches the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChannel {
    /// Kernel vsock (`<vsock model='virtio'>`, needs `/dev/vhost-vsock`).
    Vsock(VsockCid),
    /// A virtio-serial port backed by a Unix socket that libvirt binds.
    VirtioSerial {
        /// The host-side socket.
        socket: PathBuf,
        /// The port name the guest sees in `/sys/class/virtio-ports/*/name`.
        name: String,
    },
    /// vhost-user-vsock to a `vhost-device-vsock` backend (through
    /// `<qemu:commandline>`, with shared memfd memory). The guest CID is
    /// configured in the backend. Not migratable: no save/restore, no memory
    /// snapshots.
    HybridVsock {
        /// The backend's vhost-user socket, which QEMU connects to.
        socket: PathBuf,
    },
}

/// A kernel vsock context id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockCid {
    /// libvirt picks a free CID.
    Auto,
    /// A fixed CID (3 or more).
    Fixed(u32),
}

/// The guest's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// The default: one interface on Paddock's NAT network behind the egress filter.
    NatFiltered(NatAttachment),
    /// No network interface at all.
    Isolated,
    /// An interface on an existing host bridge, unfiltered (advanced use).
    Bridge {
        /// The host bridge.
        bridge: String,
        /// The interface's MAC address.
        mac: MacAddress,
    },
}

/// An interface on a Paddock network, with its reserved address and filter;
/// [`crate::NetworkSpec::attachment`] builds one for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatAttachment {
    /// The libvirt network.
    pub network: String,
    /// The slot's MAC address (the network's DHCP reservation key).
    pub mac: MacAddress,
    /// The slot's reserved IPv4 address (the filter's `IP` parameter).
    pub ip: Ipv4Addr,
    /// The network's gateway, DHCP and DNS server (the filter's `GATEWAY` parameter).
    pub gateway: Ipv4Addr,
    /// The nwfilter referenced by the interface.
    pub filter: String,
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_needs_the_device_and_vmx_or_svm() {
        let vmx = "processor: 0\nflags\t\t: fpu vme vmx sse\n";
        let svm = "flags\t\t: fpu svm\n";
        let none = "flags\t\t: fpu vme hypervisor\nmodel name: svm-like vmx\n";
        assert!(kvm_usable(true, vmx));
        assert!(kvm_usable(true, svm));
        assert!(!kvm_usable(false, vmx));
        assert!(!kvm_usable(true, none));
        assert!(!kvm_usable(true, ""));
    }

    #[test]
    fn this_host_resolves_to_a_concrete_accelerator() {
        assert_ne!(Acceleration::Auto.resolve(), Acceleration::Auto);
        assert_eq!(Acceleration::Tcg.domain_type(), "qemu");
        assert_eq!(Acceleration::Kvm.domain_type(), "kvm");
    }

    #[test]
    fn profiles_match_the_issue() {
        let r = |p: Profile| p.resources();
        assert_eq!(
            r(Profile::Light),
            Resources {
                vcpus: 1,
                memory_mib: 512
            }
        );
        assert_eq!(
            r(Profile::Standard),
            Resources {
                vcpus: 2,
                memory_mib: 2048
            }
        );
        assert_eq!(
            r(Profile::Intensive),
            Resources {
                vcpus: 4,
                memory_mib: 8192
            }
        );
        let t = Profile::Standard.tuning();
        assert_eq!(
            t.cpu_quota,
            Some(CpuQuota {
                period_us: 100_000,
                quota_us: 200_000
            })
        );
        assert_eq!(t.memory_soft_limit_mib, None);
        assert_eq!(
            t.memory_hard_limit_mib,
            Some(2048 + TCG_TB_CACHE_MIB + QEMU_OVERHEAD_MIB + 2 * QEMU_OVERHEAD_PER_VCPU_MIB)
        );
        assert_eq!(t.pids_max, Some(QEMU_THREADS + 2));
        assert_eq!(t.tcg_tb_cache_mib, Some(TCG_TB_CACHE_MIB));
        assert!(t.has_cgroup_limits());
        assert!(!Tuning::default().has_cgroup_limits());
        assert_eq!(t.blkio_weight, Some(500));
        let huge = Profile::Custom(Resources {
            vcpus: u32::MAX,
            memory_mib: u64::MAX,
        })
        .tuning();
        assert_eq!(huge.blkio_weight, Some(1000));
        assert_eq!(huge.memory_hard_limit_mib, Some(u64::MAX));
        assert_eq!(huge.pids_max, Some(u32::MAX));
    }

    #[test]
    fn a_quota_in_percent_of_one_cpu() {
        assert_eq!(
            CpuQuota::percent_of_one_cpu(50),
            CpuQuota {
                period_us: 100_000,
                quota_us: 50_000
            }
        );
        assert_eq!(CpuQuota::percent_of_one_cpu(250).quota_us, 250_000);
        assert_eq!(CpuQuota::percent_of_one_cpu(u32::MAX).period_us, 100_000);
    }

    #[test]
    fn mac_addresses_print_in_lower_case_hex() {
        assert_eq!(
            MacAddress([0x52, 0x54, 0, 0xAB, 1, 0xff]).to_string(),
            "52:54:00:ab:01:ff"
        );
    }
}
