//! Deciding what to send libvirt so that it holds a desired network or
//! nwfilter definition: [`definition_update`].
//!
//! The desired XML is compared with libvirt's copy *semantically*, as element
//! trees: attribute order, quoting, whitespace and comments do not count.
//! Element order does (it orders filter rules of equal priority), which is
//! why networks are rendered in the order libvirt writes them back. What
//! libvirt adds by itself (a UUID, and a bridge MAC to networks) is ignored
//! unless the desired definition has it too. A redefinition must carry the
//! UUID libvirt holds, so it is copied into the XML to send.

use crate::xml::{Element, XmlError};

/// Top-level elements libvirt adds to a definition by itself.
const GENERATED: [&str; 2] = ["uuid", "mac"];

/// What to send libvirt so that it holds a desired definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefinitionUpdate {
    /// libvirt has no such object: define it with this XML.
    Define(String),
    /// libvirt's copy differs: define it again with this XML (the desired
    /// definition, carrying libvirt's UUID).
    Redefine(String),
    /// libvirt's copy is the same definition: send nothing.
    Unchanged,
}

/// Compares `desired` with libvirt's `current` XML of the same object
/// (`None` when libvirt does not have it) and says what to define.
///
/// # Errors
/// Either document is not well-formed XML.
pub fn definition_update(
    desired: &str,
    current: Option<&str>,
) -> Result<DefinitionUpdate, XmlError> {
    let mut desired = Element::parse(desired)?;
    let Some(current) = current else {
        return Ok(DefinitionUpdate::Define(desired.write()?));
    };
    let actual = Element::parse(current)?;
    if desired.same_definition(&actual, &GENERATED) {
        return Ok(DefinitionUpdate::Unchanged);
    }
    if let Some(uuid) = actual
        .child("uuid")
        .filter(|_| desired.child("uuid").is_none())
    {
        // libvirt writes the UUID right after the name.
        let at = usize::from(desired.child("name").is_some());
        desired.children.insert(at, uuid.clone());
    }
    Ok(DefinitionUpdate::Redefine(desired.write()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIRED: &str = "<network><name>n</name><bridge name='b'/></network>";

    #[test]
    fn a_missing_object_is_defined_as_desired() {
        let DefinitionUpdate::Define(xml) = definition_update(DESIRED, None).expect("valid") else {
            panic!("not a definition");
        };
        assert_eq!(
            Element::parse(&xml).expect("valid"),
            Element::parse(DESIRED).expect("valid")
        );
    }

    #[test]
    fn what_libvirt_adds_does_not_make_a_difference() {
        let current = r#"<network>
            <name>n</name><uuid>u-1</uuid><bridge name="b"/><mac address="52:54:00:00:00:01"/>
          </network>"#;
        assert_eq!(
            definition_update(DESIRED, Some(current)).expect("valid"),
            DefinitionUpdate::Unchanged
        );
    }

    #[test]
    fn a_redefinition_carries_libvirts_uuid() {
        let current = "<network><name>n</name><uuid>u-1</uuid><bridge name='old'/></network>";
        let DefinitionUpdate::Redefine(xml) =
            definition_update(DESIRED, Some(current)).expect("valid")
        else {
            panic!("not a redefinition");
        };
        let sent = Element::parse(&xml).expect("valid");
        let names: Vec<&str> = sent.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["name", "uuid", "bridge"]);
        assert_eq!(sent.child_text("uuid"), Some("u-1"));
        assert_eq!(sent.child("bridge").and_then(|b| b.attr("name")), Some("b"));
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(definition_update("<network>", None).is_err());
        assert!(definition_update(DESIRED, Some("<network></filter>")).is_err());
    }
}
