//! Paddock's nwfilters: [`FilterDefinition`], the filters built into this
//! crate, and reading others from a folder.
//!
//! The repository's `nwfilters/` folder is the source of the built-in
//! filters ([`builtin_filters`], [`FilterDefinition::builtin`]). They are
//! compiled in with `include_str!`, so a program using Paddock needs no
//! checkout at run time, and a test checks that the embedded set is exactly
//! what [`load_filters`] reads from that folder. [`load_filters`] is for
//! filters of one's own.

use std::path::{Path, PathBuf};

use crate::xml::{Element, XmlError};

/// The egress filter of NAT-filtered sandboxes. Interfaces reference it with
/// the parameters `IP` (the slot's reserved address) and `GATEWAY` (the
/// network's bridge address): anti-spoofing, DHCP with the gateway only,
/// DNS to the gateway, new outbound TCP to ports 80, 443, 22 and 9418,
/// nothing to private ranges.
pub const EGRESS_FILTER: &str = "paddock-egress";

/// The filter that drops every frame to and from an interface.
pub const DROP_ALL_FILTER: &str = "paddock-drop-all";

/// The built-in filters as (name, XML), in the order [`load_filters`] reads
/// their files (by file name, which is the filter's name plus `.xml`).
const BUILTIN: [(&str, &str); 2] = [
    (
        DROP_ALL_FILTER,
        include_str!("../../../nwfilters/paddock-drop-all.xml"),
    ),
    (
        EGRESS_FILTER,
        include_str!("../../../nwfilters/paddock-egress.xml"),
    ),
];

/// An nwfilter definition: a `<filter>` document and its name.
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

    /// The built-in filter called `name` ([`EGRESS_FILTER`],
    /// [`DROP_ALL_FILTER`]); `None` for any other name.
    #[must_use]
    pub fn builtin(name: &str) -> Option<Self> {
        BUILTIN
            .iter()
            .find(|(builtin, _)| *builtin == name)
            .map(|&(name, xml)| Self::from_static(name, xml))
    }

    fn from_static(name: &str, xml: &str) -> Self {
        Self {
            name: name.to_owned(),
            xml: xml.to_owned(),
        }
    }
}

/// Every built-in filter, in name order: what [`load_filters`] gives for the
/// repository's `nwfilters/` folder.
#[must_use]
pub fn builtin_filters() -> Vec<FilterDefinition> {
    BUILTIN
        .iter()
        .map(|&(name, xml)| FilterDefinition::from_static(name, xml))
        .collect()
}

/// Why nwfilter definitions could not be read from a folder.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A filter folder or file could not be read.
    #[error("Could not read nwfilter definitions at {path:?}")]
    Read {
        /// The folder or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A filter file is not a named `<filter>`.
    #[error("The nwfilter file {path:?} is not a named <filter>")]
    NotAFilter {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: XmlError,
    },
}

/// Reads every `*.xml` file of `dir` as a filter, in file-name order.
///
/// # Errors
/// A file that cannot be read or is not a named `<filter>`.
pub fn load_filters(dir: &Path) -> Result<Vec<FilterDefinition>, FilterError> {
    let read_dir = |source| FilterError::Read {
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
            let xml = std::fs::read_to_string(&path).map_err(|source| FilterError::Read {
                path: path.clone(),
                source,
            })?;
            FilterDefinition::parse(xml).map_err(|source| FilterError::NotAFilter { path, source })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository_filters() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nwfilters")
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

    #[test]
    fn embedded_filters_are_the_repository_folder() {
        let on_disk = load_filters(&repository_filters()).expect("nwfilters/ loads");
        assert_eq!(builtin_filters(), on_disk);
    }

    #[test]
    fn builtin_filters_parse_to_their_names() {
        for filter in builtin_filters() {
            let parsed = FilterDefinition::parse(filter.xml.clone()).expect("a named <filter>");
            assert_eq!(parsed, filter);
            assert_eq!(FilterDefinition::builtin(&filter.name), Some(filter));
        }
        let names: Vec<String> = builtin_filters().into_iter().map(|f| f.name).collect();
        assert_eq!(names, [DROP_ALL_FILTER, EGRESS_FILTER]);
        assert_eq!(FilterDefinition::builtin("clean-traffic"), None);
    }

    #[test]
    fn unreadable_folders_and_bad_files_are_typed_errors() -> Result<(), std::io::Error> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("missing");
        assert!(matches!(
            load_filters(&missing),
            Err(FilterError::Read { ref path, .. }) if *path == missing
        ));
        std::fs::write(dir.path().join("a.xml"), "<filter name='a'/>")?;
        std::fs::write(dir.path().join("notes.txt"), "not a filter")?;
        let loaded = load_filters(dir.path()).expect("one filter");
        assert_eq!(loaded.len(), 1);
        std::fs::write(dir.path().join("b.xml"), "<network name='b'/>")?;
        assert!(matches!(
            load_filters(dir.path()),
            Err(FilterError::NotAFilter { ref path, .. }) if path.ends_with("b.xml")
        ));
        Ok(())
    }
}
