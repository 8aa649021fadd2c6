//! Per-domain statistics for every domain in one call.
//!
//! `virConnectGetAllDomainStats` answers for all domains at once, so a metrics
//! scrape costs one round trip to libvirtd however many domains run. The
//! `virt` crate returns its records unparsed (and never frees them), so this
//! module calls libvirt directly, reads the typed parameters with libvirt's
//! own accessors and frees the list. A value libvirt does not report (an
//! inactive domain has no CPU time) reads as 0.

use std::ffi::{CStr, CString, c_char, c_int};

use virt::connect::Connect;
use virt::error::Error as VirtError;
use virt::sys;

use crate::domain::DomainState;

/// One domain's statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStats {
    /// The domain's name.
    pub name: String,
    /// Its state.
    pub state: DomainState,
    /// CPU time used, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Memory assigned to the guest, in KiB.
    pub memory_kib: u64,
    /// Resident memory of the QEMU process, in KiB.
    pub memory_rss_kib: u64,
    /// Per-disk I/O.
    pub block: Vec<BlockStats>,
    /// Per-interface I/O.
    pub interfaces: Vec<InterfaceStats>,
}

/// One disk's I/O counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStats {
    /// Target name (`vda`).
    pub name: String,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read requests.
    pub read_requests: u64,
    /// Write requests.
    pub write_requests: u64,
}

/// One interface's I/O counters (from the host's side of the tap device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceStats {
    /// Host-side device name (`vnet3`).
    pub name: String,
    /// Bytes received by the guest.
    pub rx_bytes: u64,
    /// Packets received by the guest.
    pub rx_packets: u64,
    /// Bytes sent by the guest.
    pub tx_bytes: u64,
    /// Packets sent by the guest.
    pub tx_packets: u64,
}

/// Frees the record list libvirt allocated, on every path.
struct RecordList(*mut sys::virDomainStatsRecordPtr);

impl Drop for RecordList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from virConnectGetAllDomainStats and is
            // freed exactly once, here.
            unsafe { sys::virDomainStatsRecordListFree(self.0) };
        }
    }
}

/// One record's typed parameters.
struct Params {
    ptr: sys::virTypedParameterPtr,
    len: c_int,
}

impl Params {
    fn u64(&self, name: &str) -> u64 {
        let (Ok(name), mut value) = (CString::new(name), 0) else {
            return 0;
        };
        // SAFETY: `ptr`/`len` describe the record's parameter array, alive
        // while the record list is; `name` is NUL-terminated.
        let found =
            unsafe { sys::virTypedParamsGetULLong(self.ptr, self.len, name.as_ptr(), &mut value) };
        if found == 1 { value } else { 0 }
    }

    fn u32(&self, name: &str) -> u32 {
        let (Ok(name), mut value) = (CString::new(name), 0) else {
            return 0;
        };
        // SAFETY: as in `u64`.
        let found =
            unsafe { sys::virTypedParamsGetUInt(self.ptr, self.len, name.as_ptr(), &mut value) };
        if found == 1 { value } else { 0 }
    }

    fn i32(&self, name: &str) -> Option<i32> {
        let (Ok(name), mut value) = (CString::new(name), 0) else {
            return None;
        };
        // SAFETY: as in `u64`.
        let found =
            unsafe { sys::virTypedParamsGetInt(self.ptr, self.len, name.as_ptr(), &mut value) };
        (found == 1).then_some(value)
    }

    fn string(&self, name: &str) -> String {
        let Ok(name) = CString::new(name) else {
            return String::new();
        };
        let mut value: *const c_char = std::ptr::null();
        // SAFETY: as in `u64`; on success `value` points into the array.
        let found =
            unsafe { sys::virTypedParamsGetString(self.ptr, self.len, name.as_ptr(), &mut value) };
        if found != 1 || value.is_null() {
            return String::new();
        }
        // SAFETY: libvirt's strings are NUL-terminated and live as long as the array.
        unsafe { CStr::from_ptr(value) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Statistics of every domain on `conn`. Blocking.
pub(crate) fn all_domain_stats(conn: &Connect) -> Result<Vec<DomainStats>, VirtError> {
    let groups = sys::VIR_DOMAIN_STATS_STATE
        | sys::VIR_DOMAIN_STATS_CPU_TOTAL
        | sys::VIR_DOMAIN_STATS_BALLOON
        | sys::VIR_DOMAIN_STATS_BLOCK
        | sys::VIR_DOMAIN_STATS_INTERFACE;
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` is a live connection; libvirt fills `records` with a
    // NULL-terminated array it allocated, which `RecordList` frees.
    let count = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), groups, &mut records, 0) };
    let list = RecordList(records);
    let count = usize::try_from(count).map_err(|_| VirtError::last_error())?;
    let mut all = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: the array holds `count` valid record pointers.
        let record = unsafe { &**list.0.add(i) };
        let p = Params {
            ptr: record.params,
            len: record.nparams,
        };
        // SAFETY: `record.dom` is a live domain owned by the record; its
        // name is a NUL-terminated string owned by the domain.
        let name = unsafe {
            let name = sys::virDomainGetName(record.dom);
            if name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(name).to_string_lossy().into_owned()
            }
        };
        let block = (0..p.u32("block.count"))
            .map(|n| BlockStats {
                name: p.string(&format!("block.{n}.name")),
                read_bytes: p.u64(&format!("block.{n}.rd.bytes")),
                write_bytes: p.u64(&format!("block.{n}.wr.bytes")),
                read_requests: p.u64(&format!("block.{n}.rd.reqs")),
                write_requests: p.u64(&format!("block.{n}.wr.reqs")),
            })
            .collect();
        let interfaces = (0..p.u32("net.count"))
            .map(|n| InterfaceStats {
                name: p.string(&format!("net.{n}.name")),
                rx_bytes: p.u64(&format!("net.{n}.rx.bytes")),
                rx_packets: p.u64(&format!("net.{n}.rx.pkts")),
                tx_bytes: p.u64(&format!("net.{n}.tx.bytes")),
                tx_packets: p.u64(&format!("net.{n}.tx.pkts")),
            })
            .collect();
        all.push(DomainStats {
            name,
            state: p
                .i32("state.state")
                .map_or(DomainState::Unknown, DomainState::from_raw),
            cpu_time_ns: p.u64("cpu.time"),
            memory_kib: p.u64("balloon.current"),
            memory_rss_kib: p.u64("balloon.rss"),
            block,
            interfaces,
        });
    }
    Ok(all)
}
