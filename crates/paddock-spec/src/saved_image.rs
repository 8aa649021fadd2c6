//! libvirt's QEMU save-image format, and deriving one saved image from
//! another with a different domain XML.
//!
//! # Why
//!
//! `virDomainRestoreFlags` with a `dxml` is checked for ABI stability against
//! the XML in the image, and libvirt 9.0 counts the domain's name and UUID as
//! ABI: one saved golden image cannot come back as many domains that way. The
//! XML in the image itself is not checked, so [`derive_saved_image`] writes a
//! copy of the image whose header carries the new domain's XML, and restoring
//! that copy gives a domain with the new name, UUID, sockets and disk paths.
//! The new XML must describe the same guest (same devices in the same order,
//! same memory): it should be rendered from the same kind of
//! [`crate::DomainSpec`] as the saved domain. If it does not, QEMU refuses
//! the device state when the copy is restored; nothing is silently wrong.
//! Guest-visible state that lives in the memory image stays the saved
//! guest's, notably a network card's MAC address.
//!
//! # Layout (libvirt `qemu_saveimage.h`, version 2, little-endian here)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 16 | magic `LibvirtQemudSave` (`LibvirtQemudPart` while being written) |
//! | 16 | 4 | version (2) |
//! | 20 | 4 | `data_len`: bytes of the data section that follows the header |
//! | 24 | 4 | `was_running` |
//! | 28 | 4 | `compressed` (0: raw) |
//! | 32 | 4 | `cookie_offset`: where the cookie starts inside the data section |
//! | 36 | 56 | unused, zero |
//! | 92 | `data_len` | domain XML, NUL; cookie XML, NUL; zero padding |
//! | 92 + `data_len` | rest | QEMU's migration stream |
//!
//! libvirt pads the data section by 64 KiB so the XML can grow in place; a
//! derived image gets the same padding.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The magic of a complete save image.
pub const SAVE_MAGIC: &[u8; 16] = b"LibvirtQemudSave";

/// The magic of an image libvirt has not finished writing.
pub const PARTIAL_MAGIC: &[u8; 16] = b"LibvirtQemudPart";

/// The header version this module reads and writes.
pub const SAVE_VERSION: u32 = 2;

/// Size of the fixed header.
pub const HEADER_LEN: usize = 92;

/// The largest data section accepted (checked before allocating): libvirt's
/// own XML is tens of KiB plus 64 KiB of padding.
pub const MAX_DATA_LEN: u32 = 16 << 20;

/// Padding after the XML and cookie, as libvirt leaves it.
const PADDING: usize = 64 * 1024;

/// Why a save image cannot be read or derived.
#[derive(Debug, thiserror::Error)]
pub enum SavedImageError {
    /// Reading or writing failed.
    #[error("I/O error on saved image {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with libvirt's magic.
    #[error("Not a libvirt QEMU save image")]
    BadMagic,
    /// libvirt did not finish writing the image.
    #[error("The save image is incomplete (libvirt did not finish writing it)")]
    Partial,
    /// A header version this module does not know (or another byte order).
    #[error("Unsupported save image version {0}")]
    UnsupportedVersion(u32),
    /// The image is compressed; only raw images can be derived.
    #[error("The save image is compressed (format {0}); only raw images are supported")]
    Compressed(u32),
    /// The data section is larger than [`MAX_DATA_LEN`].
    #[error("The save image's data section of {0} bytes is too large")]
    DataTooLarge(u32),
    /// The data section is malformed.
    #[error("Malformed save image data: {0}")]
    Malformed(&'static str),
}

/// What precedes the migration stream in a save image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedImageHeader {
    /// Whether the domain ran when it was saved.
    pub was_running: bool,
    /// The domain XML libvirt restores.
    pub domain_xml: String,
    /// libvirt's cookie (an XML document, possibly empty).
    pub cookie: Vec<u8>,
    /// Where the migration stream starts in the file.
    pub stream_offset: u64,
}

impl SavedImageHeader {
    /// Reads the header and data section from `reader`, positioned at the
    /// start of a save image.
    ///
    /// # Errors
    /// [`SavedImageError`] for anything that is not a complete, raw,
    /// version-2 image; I/O errors carry an empty path.
    pub fn read_from<R: Read>(reader: &mut R) -> Result<Self, SavedImageError> {
        let io = |source| SavedImageError::Io {
            path: PathBuf::new(),
            source,
        };
        let mut fixed = [0u8; HEADER_LEN];
        reader.read_exact(&mut fixed).map_err(io)?;
        let field = |at: usize| {
            u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        match &fixed[..16] {
            magic if magic == SAVE_MAGIC => {}
            magic if magic == PARTIAL_MAGIC => return Err(SavedImageError::Partial),
            _ => return Err(SavedImageError::BadMagic),
        }
        let (version, data_len, was_running, compressed, cookie_offset) =
            (field(16), field(20), field(24), field(28), field(32));
        if version != SAVE_VERSION {
            return Err(SavedImageError::UnsupportedVersion(version));
        }
        if compressed != 0 {
            return Err(SavedImageError::Compressed(compressed));
        }
        if data_len > MAX_DATA_LEN {
            return Err(SavedImageError::DataTooLarge(data_len));
        }
        let data_len =
            usize::try_from(data_len).map_err(|_| SavedImageError::DataTooLarge(data_len))?;
        let cookie_offset = usize::try_from(cookie_offset)
            .ok()
            .filter(|&at| at > 0 && at <= data_len)
            .ok_or(SavedImageError::Malformed("cookie offset outside the data"))?;
        let mut data = vec![0u8; data_len];
        reader.read_exact(&mut data).map_err(io)?;
        let xml = data[..cookie_offset]
            .split(|&b| b == 0)
            .next()
            .unwrap_or_default();
        if data[..cookie_offset].len() == xml.len() {
            return Err(SavedImageError::Malformed("domain XML without its NUL"));
        }
        let domain_xml = std::str::from_utf8(xml)
            .map_err(|_| SavedImageError::Malformed("domain XML is not UTF-8"))?
            .to_owned();
        let cookie = data[cookie_offset..]
            .split(|&b| b == 0)
            .next()
            .unwrap_or_default()
            .to_vec();
        Ok(Self {
            was_running: was_running != 0,
            domain_xml,
            cookie,
            stream_offset: u64::try_from(HEADER_LEN + data_len).unwrap_or(u64::MAX),
        })
    }

    /// Writes a header and data section carrying `self`'s XML and cookie
    /// (the stream offset is not written: it follows from the layout).
    ///
    /// # Errors
    /// The writer's error, or [`SavedImageError::DataTooLarge`].
    pub fn write_to<W: Write>(&self, writer: &mut W) -> Result<(), SavedImageError> {
        let xml_len = self.domain_xml.len() + 1;
        let used = xml_len + self.cookie.len() + 1;
        let data_len = used + PADDING;
        let too_large =
            || SavedImageError::DataTooLarge(u32::try_from(data_len).unwrap_or(u32::MAX));
        let data_len_u32 = u32::try_from(data_len)
            .ok()
            .filter(|&len| len <= MAX_DATA_LEN)
            .ok_or_else(too_large)?;
        let cookie_offset = u32::try_from(xml_len).map_err(|_| too_large())?;
        let mut fixed = [0u8; HEADER_LEN];
        fixed[..16].copy_from_slice(SAVE_MAGIC);
        for (at, value) in [
            (16, SAVE_VERSION),
            (20, data_len_u32),
            (24, u32::from(self.was_running)),
            (28, 0),
            (32, cookie_offset),
        ] {
            fixed[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        let io = |source| SavedImageError::Io {
            path: PathBuf::new(),
            source,
        };
        writer.write_all(&fixed).map_err(io)?;
        writer.write_all(self.domain_xml.as_bytes()).map_err(io)?;
        writer.write_all(&[0]).map_err(io)?;
        writer.write_all(&self.cookie).map_err(io)?;
        writer.write_all(&[0]).map_err(io)?;
        writer.write_all(&vec![0u8; PADDING]).map_err(io)?;
        Ok(())
    }
}

/// Reads the header of the save image at `path`.
///
/// # Errors
/// As [`SavedImageHeader::read_from`], with the path.
pub fn read_saved_image_header(path: &Path) -> Result<SavedImageHeader, SavedImageError> {
    let with_path = |err| with_path(err, path);
    let file = File::open(path).map_err(|source| SavedImageError::Io {
        path: path.to_owned(),
        source,
    })?;
    SavedImageHeader::read_from(&mut io::BufReader::new(file)).map_err(with_path)
}

/// Writes `derived` as a copy of the save image `golden` whose domain XML is
/// `domain_xml` (see the module docs for what the XML may change). Blocking:
/// it copies the whole memory image; call it from a blocking thread. The
/// copy holds a guest's memory: it is readable by its owner only (mode
/// [`DERIVED_IMAGE_MODE`], as libvirt writes saved images), and libvirtd,
/// which runs as root, reads it for QEMU.
///
/// # Errors
/// [`SavedImageError`] when `golden` is not a usable image or a file
/// operation fails. A failed copy leaves no `derived` file behind.
pub fn derive_saved_image(
    golden: &Path,
    domain_xml: &str,
    derived: &Path,
) -> Result<(), SavedImageError> {
    let golden_io = |source| SavedImageError::Io {
        path: golden.to_owned(),
        source,
    };
    let derived_io = |source| SavedImageError::Io {
        path: derived.to_owned(),
        source,
    };
    let mut input = File::open(golden).map_err(golden_io)?;
    let header = SavedImageHeader::read_from(&mut io::BufReader::new(&mut input))
        .map_err(|err| with_path(err, golden))?;
    input
        .seek(SeekFrom::Start(header.stream_offset))
        .map_err(golden_io)?;
    let new_header = SavedImageHeader {
        domain_xml: domain_xml.to_owned(),
        ..header
    };
    // Written under a temporary name and renamed, so a reader never sees a
    // half-written image under the final name.
    let partial = derived.with_extension("partial");
    let result = (|| {
        let file = create_private(&partial).map_err(derived_io)?;
        let mut output = BufWriter::new(file);
        new_header
            .write_to(&mut output)
            .map_err(|err| with_path(err, derived))?;
        let mut output = output
            .into_inner()
            .map_err(|e| derived_io(e.into_error()))?;
        io::copy(&mut input, &mut output).map_err(derived_io)?;
        output.sync_all().map_err(derived_io)?;
        std::fs::rename(&partial, derived).map_err(derived_io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// The mode of a derived save image: its owner's alone.
pub const DERIVED_IMAGE_MODE: u32 = 0o600;

/// Creates (or truncates) `path` with mode [`DERIVED_IMAGE_MODE`], whatever
/// the umask or the mode of a file left there before.
fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(DERIVED_IMAGE_MODE)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(DERIVED_IMAGE_MODE))?;
    Ok(file)
}

fn with_path(err: SavedImageError, path: &Path) -> SavedImageError {
    match err {
        SavedImageError::Io { source, .. } => SavedImageError::Io {
            path: path.to_owned(),
            source,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(xml: &str, cookie: &[u8], stream: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        SavedImageHeader {
            was_running: true,
            domain_xml: xml.to_owned(),
            cookie: cookie.to_vec(),
            stream_offset: 0,
        }
        .write_to(&mut bytes)
        .expect("write");
        bytes.extend_from_slice(stream);
        bytes
    }

    #[test]
    fn header_round_trips_and_finds_the_stream() {
        let bytes = image("<domain/>", b"<cookie/>", b"QEVM stream");
        let header = SavedImageHeader::read_from(&mut bytes.as_slice()).expect("read");
        assert_eq!(header.domain_xml, "<domain/>");
        assert_eq!(header.cookie, b"<cookie/>");
        assert!(header.was_running);
        let at = usize::try_from(header.stream_offset).expect("fits");
        assert_eq!(&bytes[at..], b"QEVM stream");
    }

    #[test]
    fn bad_images_are_typed_errors() {
        let good = image("<domain/>", b"", b"");
        let read = |bytes: &[u8]| SavedImageHeader::read_from(&mut &bytes[..]);
        let mut partial = good.clone();
        partial[..16].copy_from_slice(PARTIAL_MAGIC);
        assert!(matches!(read(&partial), Err(SavedImageError::Partial)));
        let mut garbage = good.clone();
        garbage[0] = b'X';
        assert!(matches!(read(&garbage), Err(SavedImageError::BadMagic)));
        let mut swapped = good.clone();
        swapped[16..20].copy_from_slice(&SAVE_VERSION.to_be_bytes());
        assert!(matches!(
            read(&swapped),
            Err(SavedImageError::UnsupportedVersion(_))
        ));
        let mut compressed = good.clone();
        compressed[28] = 1;
        assert!(matches!(
            read(&compressed),
            Err(SavedImageError::Compressed(1))
        ));
        let mut huge = good.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read(&huge), Err(SavedImageError::DataTooLarge(_))));
        let mut cookie_outside = good.clone();
        cookie_outside[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read(&cookie_outside),
            Err(SavedImageError::Malformed(_))
        ));
        assert!(matches!(read(&good[..50]), Err(SavedImageError::Io { .. })));
    }

    #[test]
    fn deriving_replaces_the_xml_and_keeps_the_stream() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let golden = dir.path().join("golden.img");
        let stream: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(
            &golden,
            image("<domain><name>a</name></domain>", b"<c/>", &stream),
        )?;
        let derived = dir.path().join("slot.img");
        let longer = format!("<domain><name>{}</name></domain>", "b".repeat(100_000));
        derive_saved_image(&golden, &longer, &derived)?;
        let bytes = std::fs::read(&derived)?;
        let header = read_saved_image_header(&derived)?;
        assert_eq!(header.domain_xml, longer);
        assert_eq!(header.cookie, b"<c/>");
        assert_eq!(
            &bytes[usize::try_from(header.stream_offset)?..],
            stream.as_slice()
        );
        assert!(!derived.with_extension("partial").exists());

        let err = derive_saved_image(&dir.path().join("missing.img"), "<d/>", &derived)
            .expect_err("no golden");
        assert!(
            matches!(err, SavedImageError::Io { ref path, .. } if path.ends_with("missing.img"))
        );
        Ok(())
    }

    #[test]
    fn a_derived_image_is_its_owners_alone() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let golden = dir.path().join("golden.img");
        std::fs::write(&golden, image("<domain/>", b"", b"memory"))?;
        let derived = dir.path().join("slot.img");
        // A world-readable file left under the name, and one under the
        // temporary name: neither mode survives.
        for stale in [&derived, &derived.with_extension("partial")] {
            std::fs::write(stale, b"stale")?;
            std::fs::set_permissions(stale, std::fs::Permissions::from_mode(0o666))?;
        }
        derive_saved_image(&golden, "<domain><name>b</name></domain>", &derived)?;
        let mode = std::fs::metadata(&derived)?.permissions().mode() & 0o7777;
        assert_eq!(mode, DERIVED_IMAGE_MODE, "{mode:o}");
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SavedImageHeader::read_from(&mut bytes.as_slice());
        }

        #[test]
        fn corrupted_headers_are_errors_or_parse(
            flips in proptest::collection::vec((0usize..HEADER_LEN, any::<u8>()), 1..6)
        ) {
            let mut bytes = image("<domain/>", b"<c/>", b"stream");
            for (at, value) in flips {
                bytes[at] = value;
            }
            let _ = SavedImageHeader::read_from(&mut bytes.as_slice());
        }
    }
}
