//! Domain XML: rendering a [`DomainSpec`] and reading Paddock's metadata back.
//!
//! The rendering is fixed apart from what the spec says: no graphics, no USB,
//! no balloon (`<memballoon model='none'/>`), virtio-rng from `/dev/urandom`,
//! the serial console written to a file, ACPI for graceful shutdown, no option
//! ROM on network interfaces (a sandbox never boots from the network), and every
//! way out of the guest (`on_poweroff`, `on_reboot`, `on_crash`) destroys the
//! domain: a sandbox is reset by Paddock, never by itself.

use std::borrow::Cow;
use std::path::Path;

use crate::domain::{
    Acceleration, AgentChannel, Boot, DomainRole, DomainSpec, METADATA_NAMESPACE, NetworkMode,
    PaddockMetadata, Tuning, VsockCid,
};
use crate::share::FilesystemDevice;
use crate::xml::{Element, XmlError, XmlWriter};

/// libvirt's namespace for `<qemu:commandline>`.
const QEMU_NAMESPACE: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// The PCI slot of the hybrid vsock device: the last on the `pc` machine's
/// root bus, far above the few that libvirt assigns.
const HYBRID_VSOCK_PCI_SLOT: &str = "0x1f";

/// The chardev id of the hybrid vsock's vhost-user socket.
const HYBRID_VSOCK_CHARDEV: &str = "paddock-vsock";

/// Renders the domain XML for `spec`.
///
/// # Errors
/// [`XmlError::InvalidSpec`] for values libvirt would reject (zero vCPUs or
/// memory, a vsock CID below 3, disk boot without a disk, a CPU period or
/// quota out of libvirt's range) or that could not work (a memory hard
/// limit not above the guest's memory, a zero thread limit or translation
/// cache), and [`XmlError::NonUtf8Path`] for a path that cannot be written
/// into XML.
pub fn render_domain(spec: &DomainSpec) -> Result<String, XmlError> {
    let resources = spec.profile.resources();
    if resources.vcpus == 0 || resources.memory_mib == 0 {
        return Err(XmlError::InvalidSpec(
            "a domain needs at least one vCPU and some memory",
        ));
    }
    check_tuning(&spec.tuning, resources.memory_mib)?;
    let hybrid = matches!(spec.channel, AgentChannel::HybridVsock { .. });
    let mut w = XmlWriter::new();
    let domain_type = spec.acceleration.domain_type();
    if hybrid {
        w.start(
            "domain",
            &[("type", domain_type), ("xmlns:qemu", QEMU_NAMESPACE)],
        )?;
    } else {
        w.start("domain", &[("type", domain_type)])?;
    }
    w.text("name", &[], &spec.name)?;
    w.text(
        "uuid",
        &[],
        spec.uuid
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    )?;
    render_metadata(&mut w, &spec.metadata)?;
    w.text(
        "memory",
        &[("unit", "MiB")],
        &resources.memory_mib.to_string(),
    )?;
    w.text("vcpu", &[], &resources.vcpus.to_string())?;
    if hybrid || !spec.filesystems.is_empty() {
        // vhost-user backends (the hybrid vsock's, virtiofsd) map guest
        // memory: it must be shared and fd-backed.
        w.start("memoryBacking", &[])?;
        w.empty("source", &[("type", "memfd")])?;
        w.empty("access", &[("mode", "shared")])?;
        w.end("memoryBacking")?;
    }
    render_tuning(&mut w, &spec.tuning)?;
    render_os(&mut w, spec)?;
    w.start("features", &[])?;
    w.empty("acpi", &[])?;
    if let (Acceleration::Tcg, Some(mib)) =
        (spec.acceleration.resolve(), spec.tuning.tcg_tb_cache_mib)
    {
        w.start("tcg", &[])?;
        w.text("tb-cache", &[("unit", "MiB")], &mib.to_string())?;
        w.end("tcg")?;
    }
    w.end("features")?;
    for event in ["on_poweroff", "on_reboot", "on_crash"] {
        w.text(event, &[], "destroy")?;
    }
    render_devices(&mut w, spec)?;
    if let Some(label) = spec.run_as {
        w.start(
            "seclabel",
            &[("type", "static"), ("model", "dac"), ("relabel", "no")],
        )?;
        w.text("label", &[], &format!("+{}:+{}", label.uid, label.gid))?;
        w.end("seclabel")?;
    }
    if let AgentChannel::HybridVsock { socket } = &spec.channel {
        let socket = utf8(socket, "hybrid vsock socket")?;
        let chardev = format!(
            "socket,id={HYBRID_VSOCK_CHARDEV},path={}",
            qemu_opt_escape(socket)
        );
        // An explicit slot: libvirt addresses its own devices from slot 1
        // up and does not know about this one, so a free-floating device
        // could take a slot libvirt then assigns again.
        let device = format!(
            "vhost-user-vsock-pci,chardev={HYBRID_VSOCK_CHARDEV},bus=pci.0,addr={HYBRID_VSOCK_PCI_SLOT}"
        );
        w.start("qemu:commandline", &[])?;
        for arg in ["-chardev", &chardev, "-device", &device] {
            w.empty("qemu:arg", &[("value", arg)])?;
        }
        w.end("qemu:commandline")?;
    }
    w.end("domain")?;
    w.finish()
}

/// One virtiofs `<filesystem>` per export. No `<readonly/>`: libvirt 9.0
/// refuses it for virtiofs; read-only folders are exported as read-only
/// bind mounts instead ([`crate::share`]). `passthrough` is the only access
/// mode virtiofs has.
/// A `<channel type='unix'>` virtio-serial port whose socket libvirt binds.
fn render_serial_port(w: &mut XmlWriter, socket: &Path, name: &str) -> Result<(), XmlError> {
    w.start("channel", &[("type", "unix")])?;
    w.empty(
        "source",
        &[
            ("mode", "bind"),
            ("path", utf8(socket, "serial port socket")?),
        ],
    )?;
    w.empty("target", &[("type", "virtio"), ("name", name)])?;
    w.end("channel")?;
    Ok(())
}

fn render_filesystems(w: &mut XmlWriter, filesystems: &[FilesystemDevice]) -> Result<(), XmlError> {
    for fs in filesystems {
        w.start(
            "filesystem",
            &[("type", "mount"), ("accessmode", "passthrough")],
        )?;
        w.empty("driver", &[("type", "virtiofs")])?;
        w.empty("source", &[("dir", utf8(&fs.source_dir, "shared folder")?)])?;
        w.empty("target", &[("dir", &fs.tag)])?;
        w.end("filesystem")?;
    }
    Ok(())
}

fn render_metadata(w: &mut XmlWriter, m: &PaddockMetadata) -> Result<(), XmlError> {
    let slot = m.role.slot().map(|n| n.to_string());
    let created = m.created_unix.to_string();
    let role = match m.role {
        DomainRole::Sandbox => "sandbox",
        DomainRole::Golden => "golden",
        DomainRole::Slot(_) => "slot",
    };
    let mut attrs = vec![
        ("xmlns:paddock", METADATA_NAMESPACE),
        ("pool", m.pool.as_str()),
        ("role", role),
    ];
    if let Some(slot) = &slot {
        attrs.push(("slot", slot));
    }
    attrs.push(("image", m.image.as_str()));
    if let Some(golden) = &m.golden {
        attrs.push(("golden", golden));
    }
    attrs.push(("created", &created));
    w.start("metadata", &[])?;
    w.empty("paddock:domain", &attrs)?;
    w.end("metadata")?;
    Ok(())
}

/// Refuses limits libvirt would reject or that could not work.
fn check_tuning(t: &Tuning, memory_mib: u64) -> Result<(), XmlError> {
    if let Some(quota) = t.cpu_quota {
        if !(1000..=1_000_000).contains(&quota.period_us) {
            return Err(XmlError::InvalidSpec(
                "the CPU period must be 1000 to 1000000 microseconds",
            ));
        }
        if quota.quota_us < 1000 {
            return Err(XmlError::InvalidSpec(
                "the CPU quota must be at least 1000 microseconds",
            ));
        }
    }
    if t.memory_hard_limit_mib
        .is_some_and(|hard| hard <= memory_mib)
    {
        return Err(XmlError::InvalidSpec(
            "the memory hard limit must be above the guest's memory",
        ));
    }
    if t.pids_max == Some(0) {
        return Err(XmlError::InvalidSpec("the thread limit must be at least 1"));
    }
    if t.tcg_tb_cache_mib == Some(0) {
        return Err(XmlError::InvalidSpec(
            "the translation cache must be at least 1 MiB",
        ));
    }
    Ok(())
}

fn render_tuning(w: &mut XmlWriter, t: &Tuning) -> Result<(), XmlError> {
    if t.cpu_shares.is_some() || t.cpu_quota.is_some() {
        w.start("cputune", &[])?;
        if let Some(shares) = t.cpu_shares {
            w.text("shares", &[], &shares.to_string())?;
        }
        if let Some(quota) = t.cpu_quota {
            w.text("global_period", &[], &quota.period_us.to_string())?;
            w.text("global_quota", &[], &quota.quota_us.to_string())?;
        }
        w.end("cputune")?;
    }
    // The hard limit is not libvirt's `<hard_limit>`: see `Tuning`.
    if let Some(soft) = t.memory_soft_limit_mib {
        w.start("memtune", &[])?;
        w.text("soft_limit", &[("unit", "MiB")], &soft.to_string())?;
        w.end("memtune")?;
    }
    if let Some(weight) = t.blkio_weight {
        w.start("blkiotune", &[])?;
        w.text("weight", &[], &weight.to_string())?;
        w.end("blkiotune")?;
    }
    Ok(())
}

fn render_os(w: &mut XmlWriter, spec: &DomainSpec) -> Result<(), XmlError> {
    w.start("os", &[])?;
    w.text("type", &[("arch", "x86_64"), ("machine", "pc")], "hvm")?;
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            w.text("kernel", &[], utf8(kernel, "kernel")?)?;
            if let Some(initrd) = initrd {
                w.text("initrd", &[], utf8(initrd, "initrd")?)?;
            }
            w.text("cmdline", &[], cmdline)?;
        }
        Boot::Disk if spec.disk.is_none() => {
            return Err(XmlError::InvalidSpec("disk boot needs a disk"));
        }
        Boot::Disk => w.empty("boot", &[("dev", "hd")])?,
    }
    w.end("os")?;
    Ok(())
}

fn render_devices(w: &mut XmlWriter, spec: &DomainSpec) -> Result<(), XmlError> {
    w.start("devices", &[])?;
    render_filesystems(w, &spec.filesystems)?;
    if let Some(disk) = &spec.disk {
        w.start("disk", &[("type", "file"), ("device", "disk")])?;
        w.empty(
            "driver",
            &[("name", "qemu"), ("type", "qcow2"), ("discard", "unmap")],
        )?;
        w.empty("source", &[("file", utf8(&disk.overlay, "overlay")?)])?;
        w.start("backingStore", &[("type", "file")])?;
        w.empty("format", &[("type", disk.base_format.as_str())])?;
        w.empty("source", &[("file", utf8(&disk.base, "base image")?)])?;
        w.end("backingStore")?;
        w.empty("target", &[("dev", "vda"), ("bus", "virtio")])?;
        w.end("disk")?;
    }
    match &spec.network {
        NetworkMode::NatFiltered(nat) => {
            let (mac, ip, gateway) = (
                nat.mac.to_string(),
                nat.ip.to_string(),
                nat.gateway.to_string(),
            );
            w.start("interface", &[("type", "network")])?;
            w.empty("mac", &[("address", &mac)])?;
            w.empty("source", &[("network", &nat.network)])?;
            w.empty("model", &[("type", "virtio")])?;
            w.empty("rom", &[("enabled", "no")])?;
            w.start("filterref", &[("filter", &nat.filter)])?;
            w.empty("parameter", &[("name", "IP"), ("value", &ip)])?;
            w.empty("parameter", &[("name", "GATEWAY"), ("value", &gateway)])?;
            w.end("filterref")?;
            w.end("interface")?;
        }
        NetworkMode::Isolated => {}
        NetworkMode::Bridge { bridge, mac } => {
            w.start("interface", &[("type", "bridge")])?;
            w.empty("mac", &[("address", &mac.to_string())])?;
            w.empty("source", &[("bridge", bridge)])?;
            w.empty("model", &[("type", "virtio")])?;
            w.empty("rom", &[("enabled", "no")])?;
            w.end("interface")?;
        }
    }
    w.start("serial", &[("type", "file")])?;
    w.empty(
        "source",
        &[("path", utf8(&spec.console_log, "console log")?)],
    )?;
    w.empty("target", &[("port", "0")])?;
    w.end("serial")?;
    match &spec.channel {
        AgentChannel::VirtioSerial { socket, name } => render_serial_port(w, socket, name)?,
        AgentChannel::Vsock(cid) => {
            w.start("vsock", &[("model", "virtio")])?;
            match cid {
                VsockCid::Auto => w.empty("cid", &[("auto", "yes")])?,
                VsockCid::Fixed(cid) if *cid < 3 => {
                    return Err(XmlError::InvalidSpec("vsock CIDs below 3 are reserved"));
                }
                VsockCid::Fixed(cid) => {
                    w.empty("cid", &[("auto", "no"), ("address", &cid.to_string())])?;
                }
            }
            w.end("vsock")?;
        }
        AgentChannel::HybridVsock { .. } => {}
    }
    for port in &spec.serial_ports {
        render_serial_port(w, &port.socket, &port.name)?;
    }
    w.empty("controller", &[("type", "usb"), ("model", "none")])?;
    w.start("rng", &[("model", "virtio")])?;
    w.text("backend", &[("model", "random")], "/dev/urandom")?;
    w.end("rng")?;
    w.empty("memballoon", &[("model", "none")])?;
    w.end("devices")?;
    Ok(())
}

fn utf8<'a>(path: &'a Path, field: &'static str) -> Result<&'a str, XmlError> {
    path.to_str().ok_or_else(|| XmlError::NonUtf8Path {
        field,
        path: path.to_path_buf(),
    })
}

/// Escapes a value for QEMU's `key=value,...` option syntax (commas double).
fn qemu_opt_escape(value: &str) -> Cow<'_, str> {
    if value.contains(',') {
        Cow::Owned(value.replace(',', ",,"))
    } else {
        Cow::Borrowed(value)
    }
}

/// Reads Paddock's metadata from a domain's XML, as libvirt returns it.
/// `Ok(None)` means the domain is not Paddock's.
///
/// # Errors
/// The XML is malformed, or Paddock's element lacks a field or has a bad one.
pub fn parse_metadata(domain_xml: &str) -> Result<Option<PaddockMetadata>, XmlError> {
    let root = Element::parse_root(domain_xml, "domain")?;
    let Some(metadata) = root.child("metadata") else {
        return Ok(None);
    };
    let ours = metadata.children.iter().find(|el| {
        let (prefix, local) = el
            .name
            .split_once(':')
            .map_or((None, el.name.as_str()), |(p, l)| (Some(p), l));
        let decl = prefix.map_or_else(|| "xmlns".to_owned(), |p| format!("xmlns:{p}"));
        let namespace = [el, metadata, &root]
            .into_iter()
            .find_map(|e| e.attr(&decl));
        local == "domain" && namespace == Some(METADATA_NAMESPACE)
    });
    let Some(el) = ours else {
        return Ok(None);
    };
    let required = |attribute: &'static str| {
        el.attr(attribute).ok_or(XmlError::MissingAttribute {
            element: "paddock:domain",
            attribute,
        })
    };
    let number = |attribute: &'static str| {
        let value = required(attribute)?;
        value
            .parse::<u64>()
            .map_err(|_| XmlError::InvalidAttribute {
                element: "paddock:domain",
                attribute,
                value: value.to_owned(),
            })
    };
    let slot = || {
        let slot = number("slot")?;
        u32::try_from(slot).map_err(|_| XmlError::InvalidAttribute {
            element: "paddock:domain",
            attribute: "slot",
            value: slot.to_string(),
        })
    };
    let role = match el.attr("role") {
        Some("sandbox") => DomainRole::Sandbox,
        Some("golden") => DomainRole::Golden,
        Some("slot") => DomainRole::Slot(slot()?),
        Some(other) => {
            return Err(XmlError::InvalidAttribute {
                element: "paddock:domain",
                attribute: "role",
                value: other.to_owned(),
            });
        }
        // Written before roles existed: a slot number, with the largest
        // one standing for the golden template.
        None => match slot()? {
            u32::MAX => DomainRole::Golden,
            n => DomainRole::Slot(n),
        },
    };
    Ok(Some(PaddockMetadata {
        pool: required("pool")?.to_owned(),
        role,
        image: required("image")?.to_owned(),
        golden: el.attr("golden").map(str::to_owned),
        created_unix: number("created")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_found_by_namespace_not_prefix() {
        let xml = r#"<domain><metadata>
            <other:domain xmlns:other="https://example.invalid/x" pool="no"/>
            <p:domain xmlns:p="https://paddock.dev/xmlns/domain/1" pool="web" slot="7"
                      image="debian" created="1700000000"/>
          </metadata></domain>"#;
        let m = parse_metadata(xml).expect("parses").expect("has metadata");
        assert_eq!(m.pool, "web");
        assert_eq!(m.role, DomainRole::Slot(7));
        assert_eq!(m.golden, None);
        assert_eq!(
            parse_metadata("<domain><name>x</name></domain>").expect("parses"),
            None
        );
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let with = |attrs: &str| {
            format!(
                r#"<domain><metadata><paddock:domain xmlns:paddock="{METADATA_NAMESPACE}" {attrs}/></metadata></domain>"#
            )
        };
        let ok = r#"pool="p" slot="1" image="i" created="5""#;
        assert!(parse_metadata(&with(ok)).expect("parses").is_some());
        for (attrs, role) in [
            (r#"role="slot" slot="1""#, DomainRole::Slot(1)),
            (r#"role="golden""#, DomainRole::Golden),
            (r#"role="sandbox""#, DomainRole::Sandbox),
            (r#"slot="4294967295""#, DomainRole::Golden),
        ] {
            let xml = with(&format!(r#"pool="p" {attrs} image="i" created="5""#));
            let m = parse_metadata(&xml).expect("parses").expect("has metadata");
            assert_eq!(m.role, role, "{attrs}");
        }
        for bad in [
            r#"pool="p" role="slot" image="i" created="5""#,
            r#"pool="p" role="pet" image="i" created="5""#,
            r#"pool="p" image="i" created="5""#,
            r#"slot="1" image="i" created="5""#,
            r#"pool="p" slot="-1" image="i" created="5""#,
            r#"pool="p" slot="4294967296" image="i" created="5""#,
            r#"pool="p" slot="1" image="i" created="soon""#,
        ] {
            assert!(parse_metadata(&with(bad)).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_metadata("<network/>"),
            Err(XmlError::UnexpectedRoot { .. })
        ));
    }

    #[test]
    fn qemu_options_double_commas() {
        assert_eq!(qemu_opt_escape("/run/a,b/s.sock"), "/run/a,,b/s.sock");
        assert!(matches!(qemu_opt_escape("/plain"), Cow::Borrowed(_)));
    }
}
