//! Snapshot XML: the `<domainsnapshot>` Paddock asks for ([`SnapshotSpec`],
//! [`render_snapshot`]) and what libvirt lists ([`SnapshotInfo`],
//! [`parse_snapshot`]).
//!
//! Paddock takes internal snapshots with memory: the disk state and, for a
//! running domain, the memory and device state are kept inside the domain's
//! qcow2 disk, so the domain needs one ([`crate::DomainSpec::disk`]).
//! libvirt 9.0 cannot revert external snapshots.
//!
//! libvirt's snapshot XML has no metadata element, so tags travel in the
//! description: its last line is `paddock-tags: a,b` when there are tags.
//! Tags therefore may not be empty or contain commas or whitespace.

use crate::xml::{Element, XmlError, XmlWriter};

/// The line that carries tags at the end of a snapshot description.
pub const TAGS_PREFIX: &str = "paddock-tags: ";

/// A snapshot to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSpec {
    /// Snapshot name, unique per domain.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Labels (no commas, no whitespace).
    pub tags: Vec<String>,
}

/// A snapshot as libvirt lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Snapshot name.
    pub name: String,
    /// The description without the tags line.
    pub description: String,
    /// The tags.
    pub tags: Vec<String>,
    /// Creation time in seconds since the Unix epoch.
    pub created_unix: u64,
    /// The domain's state when it was taken (`running`, `shutoff`...).
    pub state: String,
}

/// Renders the `<domainsnapshot>` XML for `spec`: an internal snapshot with
/// memory.
///
/// # Errors
/// [`XmlError::InvalidSpec`] for a bad tag.
pub fn render_snapshot(spec: &SnapshotSpec) -> Result<String, XmlError> {
    if spec
        .tags
        .iter()
        .any(|t| t.is_empty() || t.contains(',') || t.contains(char::is_whitespace))
    {
        return Err(XmlError::InvalidSpec(
            "snapshot tags must be non-empty, without commas or whitespace",
        ));
    }
    let mut description = spec.description.clone();
    if !spec.tags.is_empty() {
        if !description.is_empty() {
            description.push('\n');
        }
        description.push_str(TAGS_PREFIX);
        description.push_str(&spec.tags.join(","));
    }
    let mut w = XmlWriter::new();
    w.start("domainsnapshot", &[])?;
    w.text("name", &[], &spec.name)?;
    if !description.is_empty() {
        w.text("description", &[], &description)?;
    }
    w.empty("memory", &[("snapshot", "internal")])?;
    w.end("domainsnapshot")?;
    w.finish()
}

/// Reads name, description, tags, creation time and state from libvirt's
/// snapshot XML.
///
/// # Errors
/// Malformed XML, or no name or creation time.
pub fn parse_snapshot(xml: &str) -> Result<SnapshotInfo, XmlError> {
    let root = Element::parse_root(xml, "domainsnapshot")?;
    let name = root.child_text("name").ok_or(XmlError::MissingAttribute {
        element: "domainsnapshot",
        attribute: "name",
    })?;
    let created = root
        .child_text("creationTime")
        .ok_or(XmlError::MissingAttribute {
            element: "domainsnapshot",
            attribute: "creationTime",
        })?;
    let created_unix = created.parse().map_err(|_| XmlError::InvalidAttribute {
        element: "domainsnapshot",
        attribute: "creationTime",
        value: created.to_owned(),
    })?;
    let full = root.child_text("description").unwrap_or_default();
    let (rest, last) = full.rsplit_once('\n').unwrap_or(("", full));
    let (description, tags) = match last.strip_prefix(TAGS_PREFIX) {
        Some(tags) => (rest, tags.split(',').map(str::to_owned).collect()),
        None => (full, Vec::new()),
    };
    Ok(SnapshotInfo {
        name: name.to_owned(),
        description: description.to_owned(),
        tags,
        created_unix,
        state: root.child_text("state").unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libvirt_copy(spec: &SnapshotSpec) -> String {
        // What libvirt returns: our XML plus a creation time and a state.
        render_snapshot(spec).expect("valid").replace(
            "</domainsnapshot>",
            "<creationTime>1700000001</creationTime><state>running</state></domainsnapshot>",
        )
    }

    #[test]
    fn tags_round_trip_through_the_description() {
        for (description, tags) in [
            ("golden image\nsecond line", vec!["golden", "v2"]),
            ("", vec!["only-tags"]),
            ("no tags & <xml>", vec![]),
            ("", vec![]),
        ] {
            let spec = SnapshotSpec {
                name: "s1".into(),
                description: description.into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
            };
            let info = parse_snapshot(&libvirt_copy(&spec)).expect("valid");
            assert_eq!(
                (info.description.as_str(), info.tags),
                (description, spec.tags)
            );
            assert_eq!(
                (info.created_unix, info.state.as_str()),
                (1_700_000_001, "running")
            );
        }
    }

    #[test]
    fn bad_tags_are_refused() {
        for tag in ["", "a,b", "a b", "a\nb"] {
            let spec = SnapshotSpec {
                name: "s".into(),
                description: String::new(),
                tags: vec![tag.into()],
            };
            assert!(
                matches!(render_snapshot(&spec), Err(XmlError::InvalidSpec(_))),
                "{tag:?}"
            );
        }
    }
}
