//! XML plumbing shared by the renderers and parsers.
//!
//! [`XmlWriter`] is a thin layer over quick-xml's writer: every value goes
//! through quick-xml's escaping, nothing is spliced into a string by hand.
//! [`Element`] is a small owned tree used to read libvirt's answers and to
//! compare a desired definition with the one libvirt holds *semantically*:
//! attribute order, quoting, whitespace and comments do not count.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use quick_xml::Reader;
use quick_xml::Writer;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};

/// Why XML could not be rendered or parsed.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The document is not well-formed XML.
    #[error("The XML is not well-formed")]
    Parse(#[from] quick_xml::Error),
    /// Writing the document failed.
    #[error("The XML could not be written")]
    Write(#[from] io::Error),
    /// The document has no root element.
    #[error("The XML document is empty")]
    Empty,
    /// The document ends inside an element.
    #[error("The XML document ends inside an element")]
    Truncated,
    /// The root element is not the expected one.
    #[error("Expected a <{expected}> document, found <{found}>")]
    UnexpectedRoot {
        /// The element expected.
        expected: &'static str,
        /// The element found.
        found: String,
    },
    /// An element lacks an attribute it needs.
    #[error("Element <{element}> has no {attribute} attribute")]
    MissingAttribute {
        /// The element.
        element: &'static str,
        /// The attribute.
        attribute: &'static str,
    },
    /// An attribute value is not valid.
    #[error("Attribute {attribute} of <{element}> has an invalid value {value:?}")]
    InvalidAttribute {
        /// The element.
        element: &'static str,
        /// The attribute.
        attribute: &'static str,
        /// The value found.
        value: String,
    },
    /// A path to be written into XML is not UTF-8.
    #[error("The {field} path {path:?} is not UTF-8")]
    NonUtf8Path {
        /// Which path of the spec.
        field: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A spec value libvirt would reject.
    #[error("Invalid spec: {0}")]
    InvalidSpec(&'static str),
}

/// An indenting XML writer into memory.
pub(crate) struct XmlWriter(Writer<Vec<u8>>);

impl XmlWriter {
    pub(crate) fn new() -> Self {
        Self(Writer::new_with_indent(Vec::with_capacity(4096), b' ', 2))
    }

    /// `<name attrs...>`
    pub(crate) fn start(&mut self, name: &str, attrs: &[(&str, &str)]) -> io::Result<()> {
        let start = BytesStart::new(name).with_attributes(attrs.iter().copied());
        self.0.write_event(Event::Start(start))
    }

    /// `</name>`
    pub(crate) fn end(&mut self, name: &str) -> io::Result<()> {
        self.0.write_event(Event::End(BytesEnd::new(name)))
    }

    /// `<name attrs.../>`
    pub(crate) fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) -> io::Result<()> {
        let start = BytesStart::new(name).with_attributes(attrs.iter().copied());
        self.0.write_event(Event::Empty(start))
    }

    /// `<name attrs...>text</name>`
    pub(crate) fn text(
        &mut self,
        name: &str,
        attrs: &[(&str, &str)],
        text: &str,
    ) -> io::Result<()> {
        self.start(name, attrs)?;
        self.0.write_event(Event::Text(BytesText::new(text)))?;
        self.end(name)
    }

    pub(crate) fn finish(self) -> Result<String, XmlError> {
        let mut bytes = self.0.into_inner();
        bytes.push(b'\n');
        // Everything written came from `&str`, so this cannot fail in practice.
        String::from_utf8(bytes)
            .map_err(|e| XmlError::Write(io::Error::new(io::ErrorKind::InvalidData, e)))
    }
}

/// An element with its attributes, children and text (trimmed, concatenated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub(crate) name: String,
    pub(crate) attrs: BTreeMap<String, String>,
    pub(crate) children: Vec<Element>,
    pub(crate) text: String,
}

impl Element {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            attrs: BTreeMap::new(),
            children: Vec::new(),
            text: String::new(),
        }
    }

    /// Parses a whole document; comments, processing instructions and the
    /// declaration are dropped.
    pub(crate) fn parse(xml: &str) -> Result<Self, XmlError> {
        let mut reader = Reader::from_str(xml);
        reader.config_mut().trim_text(true);
        let mut stack: Vec<Element> = Vec::new();
        let mut root = None;
        loop {
            match reader.read_event()? {
                Event::Start(start) => stack.push(Self::from_start(&start)?),
                Event::Empty(start) => {
                    let element = Self::from_start(&start)?;
                    attach(&mut stack, &mut root, element);
                }
                Event::End(_) => {
                    if let Some(element) = stack.pop() {
                        attach(&mut stack, &mut root, element);
                    }
                }
                Event::Text(text) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&text.unescape()?);
                    }
                }
                Event::CData(data) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Event::Eof if stack.is_empty() => break,
                Event::Eof => return Err(XmlError::Truncated),
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        root.ok_or(XmlError::Empty)
    }

    /// Parses a document and checks its root element's name.
    pub(crate) fn parse_root(xml: &str, expected: &'static str) -> Result<Self, XmlError> {
        let root = Self::parse(xml)?;
        if root.name != expected {
            return Err(XmlError::UnexpectedRoot {
                expected,
                found: root.name,
            });
        }
        Ok(root)
    }

    fn from_start(start: &BytesStart<'_>) -> Result<Self, XmlError> {
        let mut element = Self::new(&String::from_utf8_lossy(start.name().as_ref()));
        for attr in start.attributes() {
            let attr = attr.map_err(quick_xml::Error::from)?;
            let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
            element
                .attrs
                .insert(key, attr.unescape_value()?.into_owned());
        }
        Ok(element)
    }

    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    pub(crate) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the first child called `name`, if any.
    pub(crate) fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// Whether `self` (a desired definition) and `actual` (libvirt's copy)
    /// define the same thing. Top-level children of `actual` named in
    /// `generated` (what libvirt adds itself, e.g. `uuid`) are ignored unless
    /// `self` has one too.
    pub(crate) fn same_definition(&self, actual: &Element, generated: &[&str]) -> bool {
        let kept = actual
            .children
            .iter()
            .filter(|c| !generated.contains(&c.name.as_str()) || self.child(&c.name).is_some());
        self.name == actual.name
            && self.attrs == actual.attrs
            && self.text == actual.text
            && kept.clone().count() == self.children.len()
            && kept.zip(&self.children).all(|(a, d)| a == d)
    }

    /// Serialises the tree.
    pub(crate) fn write(&self) -> Result<String, XmlError> {
        let mut w = XmlWriter::new();
        self.write_into(&mut w)?;
        w.finish()
    }

    fn write_into(&self, w: &mut XmlWriter) -> io::Result<()> {
        let attrs: Vec<(&str, &str)> = self
            .attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if self.children.is_empty() && self.text.is_empty() {
            return w.empty(&self.name, &attrs);
        }
        if self.children.is_empty() {
            return w.text(&self.name, &attrs, &self.text);
        }
        w.start(&self.name, &attrs)?;
        for child in &self.children {
            child.write_into(w)?;
        }
        w.end(&self.name)
    }
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => {
            root.get_or_insert(element);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantic_comparison_ignores_formatting_and_generated_children() {
        let desired = Element::parse(
            "<!-- c --><filter name='f' chain='root'>\n <rule a='1' b='2'><all/></rule></filter>",
        )
        .expect("valid");
        let actual = Element::parse(
            r#"<filter chain="root" name="f"><uuid>u</uuid><rule b="2" a="1"><all/></rule></filter>"#,
        )
        .expect("valid");
        assert!(desired.same_definition(&actual, &["uuid"]));
        assert!(!desired.same_definition(&actual, &[]));
        let changed = Element::parse(
            "<filter name='f' chain='root'><rule a='1' b='3'><all/></rule></filter>",
        )
        .expect("valid");
        assert!(!changed.same_definition(&actual, &["uuid"]));
        let fewer = Element::parse("<filter name='f' chain='root'/>").expect("valid");
        assert!(!fewer.same_definition(&actual, &["uuid"]));
    }

    #[test]
    fn write_round_trips_escaped_values() {
        let tree =
            Element::parse("<a x='&lt;&amp;&quot;'><b>t &amp; u</b><c/></a>").expect("valid");
        assert_eq!(tree.child_text("b"), Some("t & u"));
        assert_eq!(
            Element::parse(&tree.write().expect("valid")).expect("valid"),
            tree
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a x='1' x='2'/>",
            "<a>&bogus;</a>",
            "\u{0}",
        ] {
            assert!(Element::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
