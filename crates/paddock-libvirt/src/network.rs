//! Applying Paddock's networks and nwfilters idempotently.
//!
//! What a network or filter is lives in `paddock-spec` and is re-exported
//! here: [`NetworkSpec`] and [`render_network`] (a /24 with a DHCP
//! [`Reservation`] per slot), [`FilterDefinition`] with the built-in filters
//! ([`builtin_filters`]) and [`load_filters`] for filters of one's own.
//!
//! Applying ([`crate::Libvirt::apply_network`], [`crate::Libvirt::apply_filter`])
//! defines what is missing, redefines what differs semantically from the
//! desired XML (keeping libvirt's UUID, which a redefinition must carry) and
//! leaves the rest alone, and says which of the three happened. The
//! comparison is [`paddock_spec::definition_update`], which documents what
//! "semantically" means. A changed network is stopped, redefined and
//! started, so the change takes effect; guests attached to it lose their
//! link, so apply networks before starting guests. A redefined filter takes
//! effect at once on every interface using it.

use virt::connect::Connect;
use virt::error::ErrorNumber;

pub use paddock_spec::network::{MAX_SLOTS, NetworkKind, NetworkSpec, Reservation, render_network};
pub use paddock_spec::nwfilter::{
    DROP_ALL_FILTER, EGRESS_FILTER, FilterDefinition, FilterError, builtin_filters, load_filters,
};
use paddock_spec::{DefinitionUpdate, XmlError, definition_update};

use crate::error::LibvirtError;

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
/// and gives what happens and the XML to define (empty when unchanged).
fn decide(
    object: &str,
    desired: &str,
    current: Option<&str>,
) -> Result<(Applied, String), ApplyError> {
    let update = definition_update(desired, current).map_err(|source| ApplyError::Xml {
        object: object.to_owned(),
        source,
    })?;
    Ok(match update {
        DefinitionUpdate::Define(xml) => (Applied::Defined, xml),
        DefinitionUpdate::Redefine(xml) => (Applied::Redefined, xml),
        DefinitionUpdate::Unchanged => (Applied::Unchanged, String::new()),
    })
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
