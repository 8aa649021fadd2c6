//! Paddock's libvirt networks: [`NetworkSpec`] and its XML.
//!
//! A network is a /24 whose `.1` is the bridge address (gateway, DHCP and
//! DNS server) and whose slot `n` gets `.(n + 2)` through a DHCP host
//! reservation ([`Reservation`]), so a guest's address never changes and
//! nothing has to be learned, even for guests restored from a saved image.
//! `<port isolated='yes'/>` keeps guests on one bridge from reaching each
//! other. The [`NetworkKind::Isolated`] variant has no forwarding and no DNS:
//! guests reach the host bridge only.
//!
//! The XML is written in the order libvirt writes it back, so that
//! [`crate::definition_update`] (which counts element order) finds a network
//! libvirt already holds unchanged.

use std::net::Ipv4Addr;

use crate::domain::{MacAddress, NatAttachment};
use crate::xml::{XmlError, XmlWriter};

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

/// A slot's DHCP host reservation: the MAC and IPv4 address the network
/// keeps for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
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
    pub fn reservation(&self, slot: u16) -> Option<Reservation> {
        if slot >= self.slots.min(MAX_SLOTS) {
            return None;
        }
        let [a, b, c, _] = self.subnet.octets();
        let d = u8::try_from(slot + 2).ok()?;
        Some(Reservation {
            mac: MacAddress([0x52, 0x54, 0x00, b, c, d]),
            ip: Ipv4Addr::new(a, b, c, d),
        })
    }

    /// An interface for slot `slot` on this network behind `filter`.
    #[must_use]
    pub fn attachment(&self, slot: u16, filter: &str) -> Option<NatAttachment> {
        let reservation = self.reservation(slot)?;
        Some(NatAttachment {
            network: self.name.clone(),
            mac: reservation.mac,
            ip: reservation.ip,
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
        for reservation in (0..spec.slots).filter_map(|slot| spec.reservation(slot)) {
            let (mac, ip) = (reservation.mac.to_string(), reservation.ip.to_string());
            w.empty("host", &[("mac", &mac), ("ip", &ip)])?;
        }
        w.end("dhcp")?;
    }
    w.end("ip")?;
    w.end("network")?;
    w.finish()
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
    fn reservations_are_fixed_per_slot() {
        let net = spec(3);
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 213, 4, 1));
        let reservation = net.reservation(0).expect("slot in range");
        assert_eq!(reservation.ip, Ipv4Addr::new(10, 213, 4, 2));
        assert_eq!(reservation.mac.to_string(), "52:54:00:d5:04:02");
        assert_eq!(
            net.reservation(2).expect("slot in range").ip,
            Ipv4Addr::new(10, 213, 4, 4)
        );
        assert_eq!(net.reservation(3), None);
        let full = spec(MAX_SLOTS);
        assert_eq!(
            full.reservation(MAX_SLOTS - 1).expect("slot in range").ip,
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
        assert_eq!(spec(u16::MAX).reservation(MAX_SLOTS), None);
    }
}
