//! Paddock's libvirt networks and nwfilters, and applying them idempotently.
//!
//! Networks are rendered from a [`NetworkSpec`]: a /24 whose `.1` is the
//! bridge address (gateway, DHCP and DNS server) and whose slot `n` gets
//! `.(n + 2)` through a DHCP host reservation, so a guest's address never
//! changes and nothing has to be learned, even for guests restored from a
//! saved image. `<port isolated='yes'/>` keeps guests on one bridge from
//! reaching each other. The [`NetworkKind::Isolated`] variant has no
//! forwarding and no DNS: guests reach the host bridge only.
//!
//! Filters are the XML files in the repository's `nwfilters/` directory,
//! read with [`load_filters`].
//!
//! Applying ([`crate::Libvirt::apply_network`], [`crate::Libvirt::apply_filter`])
//! defines what is missing, redefines what differs semantically from the
//! desired XML (keeping libvirt's UUID, which a redefinition must carry) and
//! leaves the rest alone, and says which of the three happened. "Semantically"
//! means as element trees: attribute order, quoting, whitespace and comments
//! do not count, element order does (it orders filter rules of equal
//! priority), so networks are rendered in the order libvirt writes them back.
//! A changed network is stopped, redefined and started, so the change takes
//! effect; guests attached to it lose their link, so apply networks before
//! starting guests. A redefined filter takes effect at once on every
//! interface using it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use virt::connect::Connect;
use virt::error::ErrorNumber;

use crate::error::LibvirtError;
use crate::spec::{MacAddress, NatAttachment};
use crate::xml::{Element, XmlError, XmlWriter};

/// The most slots a network holds: a /24 less the network, gateway and
/// broadcast addresses.
pub const MAX_SLOTS: u16 = 253;

/// A Paddock network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// libvirt network name.
    pub name: String,
    /// Host bridge name (must not start with `vnet`, which libvirt reserves).
    pub bridge: String,
    /// NAT to the outside, or host-only.
    pub kind: NetworkKind,
    /// Any address in the /24 (e.g. `10.213.0.0`); its `.1` is the gateway.
    pub subnet: Ipv4Addr,
    /// How many slots get a DHCP reservation (at most [`MAX_SLOTS`]).
    pub slots: u16,
}

/// How a network reaches the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkKind {
    /// NAT through the host (`<forward mode='nat'/>`), with DNS on the gateway.
    Nat,
    /// No forwarding and no DNS: guests reach the host bridge only.
    Isolated,
}

/// A slot's reserved MAC and IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// `52:54:00` followed by the last three bytes of `ip`.
    pub mac: MacAddress,
    /// The reserved address.
    pub ip: Ipv4Addr,
}

impl NetworkSpec {
    /// The gateway: the bridge's address, `.1` of the /24.
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.subnet.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Slot `slot`'s reservation; `None` beyond [`NetworkSpec::slots`].
    #[must_use]
    pub fn lease(&self, slot: u16) -> Option<Lease> {
        if slot >= self.slots.min(MAX_SLOTS) {
            return None;
        }
        let [a, b, c, _] = self.subnet.octets();
        let d = u8::try_from(slot + 2).ok()?;
        Some(Lease {
            mac: MacAddress([0x52, 0x54, 0x00, b, c, d]),
            ip: Ipv4Addr::new(a, b, c, d),
        })
    }

    /// An interface for slot `slot` on this network behind `filter`.
    #[must_use]
    pub fn attachment(&self, slot: u16, filter: &str) -> Option<NatAttachment> {
        let lease = self.lease(slot)?;
        Some(NatAttachment {
            network: self.name.clone(),
            mac: lease.mac,
            ip: lease.ip,
            gateway: self.gateway(),
            filter: filter.to_owned(),
        })
    }
}

/// Renders the network XML for `spec`.
///
/// # Errors
/// [`XmlError::InvalidSpec`] for more than [`MAX_SLOTS`] slots.
pub fn render_network(spec: &NetworkSpec) -> Result<String, XmlError> {
    if spec.slots > MAX_SLOTS {
        return Err(XmlError::InvalidSpec("a network holds at most 253 slots"));
    }
    let mut w = XmlWriter::new();
    w.start("network", &[])?;
    w.text("name", &[], &spec.name)?;
    if spec.kind == NetworkKind::Nat {
        w.empty("forward", &[("mode", "nat")])?;
    }
    w.empty(
        "bridge",
        &[("name", &spec.bridge), ("stp", "off"), ("delay", "0")],
    )?;
    // In the order libvirt writes them back, which the comparison relies on.
    if spec.kind == NetworkKind::Isolated {
        w.empty("dns", &[("enable", "no")])?;
    }
    w.empty("port", &[("isolated", "yes")])?;
    let gateway = spec.gateway().to_string();
    w.start("ip", &[("address", &gateway), ("netmask", "255.255.255.0")])?;
    if spec.slots > 0 {
        w.start("dhcp", &[])?;
        for lease in (0..spec.slots).filter_map(|slot| spec.lease(slot)) {
            let (mac, ip) = (lease.mac.to_string(), lease.ip.to_string());
            w.empty("host", &[("mac", &mac), ("ip", &ip)])?;
        }
        w.end("dhcp")?;
    }
    w.end("ip")?;
    w.end("network")?;
    w.finish()
}

/// An nwfilter definition, as read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterDefinition {
    /// The filter's name (`<filter name=...>`).
    pub name: String,
    /// The XML, as written.
    pub xml: String,
}

impl FilterDefinition {
    /// Checks that `xml` is a `<filter>` with a name.
    ///
    /// # Errors
    /// Malformed XML, another root element, or no name.
    pub fn parse(xml: String) -> Result<Self, XmlError> {
        let root = Element::parse_root(&xml, "filter")?;
        let name = root
            .attr("name")
            .ok_or(XmlError::MissingAttribute {
                element: "filter",
                attribute: "name",
            })?
            .to_owned();
        Ok(Self { name, xml })
    }
}

/// Reads every `*.xml` file of `dir` as a filter, in file-name order.
///
/// # Errors
/// A file that cannot be read or is not a named `<filter>`.
pub fn load_filters(dir: &Path) -> Result<Vec<FilterDefinition>, ApplyError> {
    let read_dir = |source| ApplyError::ReadFilters {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        if path.extension().is_some_and(|ext| ext == "xml") {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let xml = std::fs::read_to_string(&path).map_err(|source| ApplyError::ReadFilters {
                path: path.clone(),
                source,
            })?;
            FilterDefinition::parse(xml).map_err(|source| ApplyError::BadFilter { path, source })
        })
        .collect()
}

/// What applying a definition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It was missing and has been defined.
    Defined,
    /// It differed and has been redefined.
    Redefined,
    /// libvirt already had it.
    Unchanged,
}

/// Why a network or filter could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A filter directory or file could not be read.
    #[error("Could not read nwfilter definitions at {path:?}")]
    ReadFilters {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A filter file is not a named `<filter>`.
    #[error("The nwfilter file {path:?} is not a named <filter>")]
    BadFilter {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: XmlError,
    },
    /// The desired or the current definition could not be handled.
    #[error("The definition of {object} is not usable")]
    Xml {
        /// `network x` or `nwfilter y`.
        object: String,
        /// What is wrong with it.
        #[source]
        source: XmlError,
    },
    /// A libvirt call failed.
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
}

/// Compares `desired` with libvirt's `current` XML, if libvirt has the object,
/// and gives the XML to define (carrying libvirt's UUID on a redefinition).
fn decide(
    object: &str,
    desired_xml: &str,
    current: Option<&str>,
) -> Result<(Applied, String), ApplyError> {
    let xml_err = |source| ApplyError::Xml {
        object: object.to_owned(),
        source,
    };
    let mut desired = Element::parse(desired_xml).map_err(xml_err)?;
    let applied = match current {
        None => Applied::Defined,
        Some(current) => {
            let actual = Element::parse(current).map_err(xml_err)?;
            // libvirt adds a UUID, and a bridge MAC to networks.
            if desired.same_definition(&actual, &["uuid", "mac"]) {
                return Ok((Applied::Unchanged, String::new()));
            }
            // A redefinition must carry the UUID libvirt holds.
            if let Some(uuid) = actual
                .child("uuid")
                .filter(|_| desired.child("uuid").is_none())
            {
                let at = usize::from(desired.child("name").is_some());
                desired.children.insert(at, uuid.clone());
            }
            Applied::Redefined
        }
    };
    Ok((applied, desired.write().map_err(xml_err)?))
}

fn call_err(op: &'static str, object: &str) -> impl FnOnce(virt::error::Error) -> ApplyError {
    let object = object.to_owned();
    move |e| ApplyError::Libvirt(LibvirtError::call(op, object, e))
}

/// Applies a network, then makes sure it runs. A network that changed is
/// stopped before it is redefined, so the new definition is the one started.
/// Blocking.
pub(crate) fn apply_network(conn: &Connect, name: &str, xml: &str) -> Result<Applied, ApplyError> {
    let object = format!("network {name}");
    let existing = match conn.lookup_network_by_name(name) {
        Ok(net) => Some(net),
        Err(e) if e.code().is(ErrorNumber::NoNetwork) => None,
        Err(e) => return Err(call_err("look up", &object)(e)),
    };
    // The persistent definition: the live XML also counts attached guests.
    // The test driver does not take the flag; its live XML is its definition.
    let current = existing
        .as_ref()
        .map(|net| {
            net.xml_desc(virt::sys::VIR_NETWORK_XML_INACTIVE)
                .or_else(|e| {
                    if e.code().is(ErrorNumber::InvalidArg) {
                        net.xml_desc(0)
                    } else {
                        Err(e)
                    }
                })
        })
        .transpose();
    let current = current.map_err(call_err("read the definition of", &object))?;
    let (applied, xml) = decide(&object, xml, current.as_deref())?;
    let net = match (applied, existing) {
        (Applied::Unchanged, Some(net)) => net,
        (_, existing) => {
            if let Some(net) = existing.filter(|net| net.is_active().unwrap_or(true)) {
                net.destroy().map_err(call_err("stop", &object))?;
            }
            conn.define_network_xml(&xml)
                .map_err(call_err("define", &object))?
        }
    };
    if !net.is_active().map_err(call_err("query", &object))? {
        net.create().map_err(call_err("start", &object))?;
    }
    Ok(applied)
}

/// Applies an nwfilter; a redefinition takes effect on every interface using
/// it at once. Blocking.
pub(crate) fn apply_filter(conn: &Connect, name: &str, xml: &str) -> Result<Applied, ApplyError> {
    let object = format!("nwfilter {name}");
    let current = match conn.lookup_nwfilter_by_name(name) {
        Ok(filter) => Some(
            filter
                .xml_desc(0)
                .map_err(call_err("read the definition of", &object))?,
        ),
        Err(e) if e.code().is(ErrorNumber::NoNwfilter) => None,
        Err(e) => return Err(call_err("look up", &object)(e)),
    };
    let (applied, xml) = decide(&object, xml, current.as_deref())?;
    if applied != Applied::Unchanged {
        conn.define_nwfilter_xml(&xml)
            .map_err(call_err("define", &object))?;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(slots: u16) -> NetworkSpec {
        NetworkSpec {
            name: "paddock-nat".into(),
            bridge: "pdk0".into(),
            kind: NetworkKind::Nat,
            subnet: Ipv4Addr::new(10, 213, 4, 0),
            slots,
        }
    }

    #[test]
    fn leases_are_fixed_per_slot() {
        let net = spec(3);
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 213, 4, 1));
        let lease = net.lease(0).expect("slot in range");
        assert_eq!(lease.ip, Ipv4Addr::new(10, 213, 4, 2));
        assert_eq!(lease.mac.to_string(), "52:54:00:d5:04:02");
        assert_eq!(
            net.lease(2).expect("slot in range").ip,
            Ipv4Addr::new(10, 213, 4, 4)
        );
        assert_eq!(net.lease(3), None);
        let full = spec(MAX_SLOTS);
        assert_eq!(
            full.lease(MAX_SLOTS - 1).expect("slot in range").ip,
            Ipv4Addr::new(10, 213, 4, 254)
        );
        let nat = net.attachment(1, "paddock-egress").expect("slot in range");
        assert_eq!(
            (nat.ip, nat.gateway),
            (Ipv4Addr::new(10, 213, 4, 3), net.gateway())
        );
    }

    #[test]
    fn too_many_slots_is_an_error() {
        assert!(render_network(&spec(MAX_SLOTS)).is_ok());
        assert!(matches!(
            render_network(&spec(MAX_SLOTS + 1)),
            Err(XmlError::InvalidSpec(_))
        ));
        assert_eq!(spec(u16::MAX).lease(MAX_SLOTS), None);
    }

    #[test]
    fn filter_files_need_a_named_filter_root() {
        assert_eq!(
            FilterDefinition::parse("<filter name='f'/>".into())
                .expect("valid")
                .name,
            "f"
        );
        assert!(FilterDefinition::parse("<filter/>".into()).is_err());
        assert!(FilterDefinition::parse("<network name='f'/>".into()).is_err());
    }
}
