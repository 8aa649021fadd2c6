//! Reads an arbitrary byte string as a libvirt save-image header.
//!
//! `SavedImageHeader::read_from` must never panic and never allocate more than
//! its data-section limit. When it accepts the input, writing the header back
//! and reading it again must give the same XML, cookie and running flag.

#![no_main]

use libfuzzer_sys::fuzz_target;
use paddock_spec::SavedImageHeader;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = SavedImageHeader::read_from(&mut &data[..]) else {
        return;
    };
    let mut bytes = Vec::new();
    header.write_to(&mut bytes).expect("an accepted header writes back");
    let again = SavedImageHeader::read_from(&mut bytes.as_slice()).expect("reads back");
    assert_eq!(again.domain_xml, header.domain_xml);
    assert_eq!(again.cookie, header.cookie);
    assert_eq!(again.was_running, header.was_running);
});
