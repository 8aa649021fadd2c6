//! The network identity of pool slots: which reserved address each slot
//! holds, and giving a restored guest that identity.
//!
//! Every slot of a pool comes from one golden memory image, so a restored
//! guest starts with the golden's MAC and address: the MAC lives in QEMU's
//! saved virtio-net state, the address in the guest kernel. The host side
//! is already the slot's own (its domain XML names the slot's MAC, and the
//! nwfilter's anti-spoofing binds that MAC and the slot's `IP`), so until
//! the guest takes the slot's identity its traffic is dropped.
//!
//! The pool sets the identity through the agent ([`identity_script`]): the
//! MAC (QEMU's virtio-net takes a new one from the guest), the address, the
//! default route and the resolver. It is static, so no DHCP round trip is on the
//! reset path; the address is the slot's DHCP reservation all the same.
//!
//! The golden takes the network's last reservation; slots take the others,
//! one each while they exist, so a replacement slot gets an address its
//! predecessor gave back.

use std::collections::BTreeSet;
use std::sync::Mutex;

use paddock_agent_client::AgentClient;
use paddock_libvirt::{FilterDefinition, NatAttachment, NetworkSpec};

use super::VmError;
use super::backend::run_commands;

/// The network of a pool's slots.
#[derive(Debug, Clone, Default)]
pub enum PoolNetwork {
    /// No network interface (the default).
    #[default]
    Isolated,
    /// Each slot on a Paddock NAT network, with its own reserved MAC and
    /// IPv4 address, behind an nwfilter, and the host behind the host
    /// firewall of the network's bridge ([`super::HostFirewall`]).
    NatFiltered {
        /// The network, one per pool (each pool hands out all of its
        /// reservations). [`crate::Paddock::create_pool`] defines or
        /// updates it and applies its bridge's host firewall; the network
        /// stays defined after the pool closes, the firewall goes with the
        /// pool (`Pool::close`). It needs
        /// more reservations ([`NetworkSpec::slots`]) than the pool's
        /// `max_size`: the last one is the golden's.
        network: NetworkSpec,
        /// Filters to define or update first (e.g. the repository's
        /// filters built into the library, [`paddock_libvirt::builtin_filters`],
        /// or a folder of them read with [`paddock_libvirt::load_filters`]).
        filters: Vec<FilterDefinition>,
        /// The filter every slot's interface references, with the `IP` and
        /// `GATEWAY` parameters (e.g. `paddock-egress`).
        filter: String,
    },
}

/// The reservations of a NAT-filtered pool: the golden's, and which of the
/// others slots hold.
#[derive(Debug)]
pub(crate) struct SlotAddresses {
    network: NetworkSpec,
    filter: String,
    /// The reservations the network has; the last is the golden's.
    count: u16,
    free: Mutex<BTreeSet<u16>>,
}

impl PoolNetwork {
    /// The reservations a pool on this network hands out; `None` without
    /// a network.
    ///
    /// # Errors
    /// [`VmError::Config`] when the network has fewer than two.
    pub(crate) fn addresses(&self) -> Result<Option<SlotAddresses>, VmError> {
        match self {
            Self::Isolated => Ok(None),
            Self::NatFiltered {
                network, filter, ..
            } => SlotAddresses::new(network.clone(), filter.clone()).map(Some),
        }
    }
}

impl SlotAddresses {
    /// The reservations of `network`, the last kept for the golden.
    ///
    /// # Errors
    /// [`VmError::Config`] when the network has fewer than two.
    pub(crate) fn new(network: NetworkSpec, filter: String) -> Result<Self, VmError> {
        let count = network.slots.min(paddock_libvirt::MAX_NETWORK_SLOTS);
        if count < 2 {
            return Err(VmError::Config(
                "a NAT-filtered pool's network needs at least two reservations",
            ));
        }
        Ok(Self {
            free: Mutex::new((0..count - 1).collect()),
            network,
            filter,
            count,
        })
    }

    /// How many slots can hold an address at once.
    pub(crate) fn capacity(&self) -> usize {
        usize::from(self.count - 1)
    }

    /// The golden's interface: the network's last reservation.
    pub(crate) fn golden(&self) -> NatAttachment {
        self.attachment(self.count - 1)
    }

    /// Takes a free reservation.
    ///
    /// # Errors
    /// [`VmError::NoFreeAddress`] when every reservation is held (slots being
    /// destroyed still hold theirs); the pool retries later.
    pub(crate) fn take(&self) -> Result<(u16, NatAttachment), VmError> {
        let taken = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_first();
        let n = taken.ok_or_else(|| VmError::NoFreeAddress {
            network: self.network.name.clone(),
        })?;
        Ok((n, self.attachment(n)))
    }

    /// Returns reservation `n`.
    pub(crate) fn give_back(&self, n: u16) {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(n);
    }

    fn attachment(&self, n: u16) -> NatAttachment {
        // `n` is below the reservation count, which `new` checked.
        self.network
            .attachment(n, &self.filter)
            .unwrap_or_else(|| unreachable!("reservation {n} is in range"))
    }
}

/// The shell commands that give the guest `attachment`'s identity on
/// `eth0`. With `stop_dhcp`, the DHCP client the image started is stopped
/// first, so that it cannot renew another identity later.
#[must_use]
pub fn identity_script(attachment: &NatAttachment, stop_dhcp: bool) -> String {
    let NatAttachment {
        mac, ip, gateway, ..
    } = attachment;
    let stop = if stop_dhcp {
        // `kill` without a pid fails, and the script runs under `set -e`.
        "kill $(pidof udhcpc dhclient) 2>/dev/null || true; "
    } else {
        ""
    };
    format!(
        "set -e; {stop}ip link set dev eth0 address {mac}; ip -4 addr flush dev eth0; \
         ip -4 addr add {ip}/24 dev eth0; ip link set dev eth0 up; \
         ip route replace default via {gateway} dev eth0; ip neigh flush dev eth0; \
         echo 'nameserver {gateway}' > /etc/resolv.conf"
    )
}

/// Gives the guest behind `client` `attachment`'s MAC, address, route and
/// resolver ([`identity_script`]).
///
/// # Errors
/// The agent fails, or a command fails in the guest.
pub(crate) async fn configure_guest(
    client: &AgentClient,
    attachment: &NatAttachment,
    stop_dhcp: bool,
) -> Result<(), VmError> {
    let script = identity_script(attachment, stop_dhcp);
    run_commands(client, std::slice::from_ref(&script), "network identity").await
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use paddock_libvirt::NetworkKind;

    use super::*;

    fn network(slots: u16) -> NetworkSpec {
        NetworkSpec {
            name: "pn".into(),
            bridge: "pnbr".into(),
            kind: NetworkKind::Nat,
            subnet: Ipv4Addr::new(10, 9, 8, 0),
            slots,
        }
    }

    #[test]
    fn golden_takes_the_last_reservation_and_slots_the_rest() {
        let addresses = SlotAddresses::new(network(3), "f".into()).expect("two or more");
        assert_eq!(addresses.capacity(), 2);
        assert_eq!(addresses.golden().ip, Ipv4Addr::new(10, 9, 8, 4));
        let (a, first) = addresses.take().expect("free");
        let (b, second) = addresses.take().expect("free");
        assert_eq!(
            (first.ip, second.ip),
            (Ipv4Addr::new(10, 9, 8, 2), Ipv4Addr::new(10, 9, 8, 3))
        );
        assert!(matches!(
            addresses.take(),
            Err(VmError::NoFreeAddress { .. })
        ));
        addresses.give_back(b);
        assert_eq!(addresses.take().expect("given back").1.ip, second.ip);
        addresses.give_back(a);
        assert_eq!(addresses.take().expect("given back").0, a);
    }

    #[test]
    fn a_network_without_room_for_a_slot_is_refused() {
        assert!(matches!(
            SlotAddresses::new(network(1), "f".into()),
            Err(VmError::Config(_))
        ));
    }

    #[test]
    fn the_script_sets_mac_address_route_and_resolver() {
        let addresses = SlotAddresses::new(network(4), "f".into()).expect("two or more");
        let (_, attachment) = addresses.take().expect("free");
        let script = identity_script(&attachment, false);
        assert!(script.starts_with("set -e; ip link set dev eth0 address 52:54:00:09:08:02;"));
        assert!(script.contains("ip -4 addr add 10.9.8.2/24 dev eth0;"));
        assert!(script.contains("ip route replace default via 10.9.8.1 dev eth0;"));
        assert!(script.ends_with("echo 'nameserver 10.9.8.1' > /etc/resolv.conf"));
        assert!(identity_script(&attachment, true).contains("kill $(pidof udhcpc dhclient)"));
    }
}
