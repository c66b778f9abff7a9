//! What a completed request must have done, by request type (VIRTIO 1.2 §5.2.6), and the
//! expected device content.

use vstor_virtio_core::GuestMemory;

use super::request::{BlkFuzzer, DEV_SIZE};
use super::{read_stream, RefChain};
use crate::config::{feature, ID_BYTES};
use crate::request::{LIFETIME, S_IOERR, S_OK, S_UNSUPP};

impl BlkFuzzer {
    /// Checks one completed request against the spec and applies its effect to `model`.
    pub(super) fn check_request(
        &mut self,
        mem: &GuestMemory,
        c: &RefChain,
        used_len: u32,
        model: &mut Model,
    ) {
        self.stats.requests_checked += 1;
        let head = c.head;
        let used_len = u64::from(used_len);
        assert!(
            (1..=c.wlen).contains(&used_len),
            "request {head}: used length {used_len} outside 1..={}",
            c.wlen
        );
        let status = read_stream(mem, &c.writable, c.wlen - 1, 1)[0];
        assert!(
            [S_OK, S_IOERR, S_UNSUPP].contains(&status),
            "request {head}: status {status}"
        );
        let ok = status == S_OK;
        if ok {
            self.stats.requests_ok += 1;
        }
        if c.rlen < 16 {
            assert!(!ok, "request {head}: no header but status OK");
            return;
        }
        let hdr = read_stream(mem, &c.readable, 0, 16);
        let ty = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
        let offered = self.h.shared.features();
        let ro = self.h.shared.read_only();
        let data_w = c.wlen - 1;
        let data_r = c.rlen - 16;
        let range = |off: Option<u64>, len: u64| {
            off.and_then(|o| Some((o, o.checked_add(len)?)))
                .filter(|&(_, e)| e <= DEV_SIZE)
        };
        let byte_range = range(sector.checked_mul(512), 0);
        let need = |bit: u64| {
            if offered & bit == 0 {
                assert!(
                    !ok,
                    "request {head}: type {ty} without its feature succeeded"
                );
            }
        };
        match ty {
            0 if ok => {
                let (o, e) = range(byte_range.map(|r| r.0), data_w)
                    .unwrap_or_else(|| panic!("request {head}: IN past capacity succeeded"));
                assert_eq!(used_len, data_w + 1, "request {head}: IN used length");
                // Sectors a failed write in this run may have touched are not compared.
                if !model.unknown[(o >> 9) as usize..e.div_ceil(512) as usize].contains(&true) {
                    let got = read_stream(mem, &c.writable, 0, data_w);
                    assert!(
                        got == model.data[o as usize..e as usize],
                        "request {head}: IN data differs from the device at {o:#x}"
                    );
                }
            }
            1 => {
                let r = range(byte_range.map(|r| r.0), data_r);
                if ok {
                    assert!(!ro, "request {head}: write to a read-only device succeeded");
                    let (o, _) = r.unwrap_or_else(|| panic!("request {head}: OUT past end OK"));
                    assert_eq!(used_len, 1, "request {head}: OUT used length");
                    let data = read_stream(mem, &c.readable, 16, data_r);
                    model.write(o, &data);
                } else if let Some((o, e)) = r {
                    model.forget(o, e);
                }
            }
            4 => {
                need(feature::FLUSH);
                if ok {
                    assert_eq!(used_len, 1, "request {head}: FLUSH used length");
                }
            }
            8 if ok => {
                let n = used_len - 1;
                assert!(
                    n <= data_w.min(ID_BYTES as u64),
                    "request {head}: GET_ID length"
                );
                let mut id = [0u8; ID_BYTES];
                let serial = self.h.shared.options().serial.as_bytes();
                id[..serial.len()].copy_from_slice(serial);
                let got = read_stream(mem, &c.writable, 0, n);
                assert!(got == id[..n as usize], "request {head}: GET_ID data");
            }
            10 => {
                need(feature::LIFETIME);
                if ok {
                    assert_eq!(used_len, 7, "request {head}: GET_LIFETIME used length");
                    let got = read_stream(mem, &c.writable, 0, 6);
                    assert!(got == LIFETIME, "request {head}: GET_LIFETIME data");
                }
            }
            11 | 13 | 14 => {
                let bit = match ty {
                    11 => feature::DISCARD,
                    13 => feature::WRITE_ZEROES,
                    _ => feature::SECURE_ERASE,
                };
                need(bit);
                self.check_ranges(mem, c, ty, ok, used_len, model);
            }
            0 | 8 => {}
            _ => assert_eq!(status, S_UNSUPP, "request {head}: unknown type {ty}"),
        }
    }

    fn check_ranges(
        &self,
        mem: &GuestMemory,
        c: &RefChain,
        ty: u32,
        ok: bool,
        used_len: u64,
        model: &mut Model,
    ) {
        let head = c.head;
        let bytes = c.rlen - 16;
        let max = u64::from(self.h.shared.options().max_discard_seg);
        let parseable = bytes > 0 && bytes % 16 == 0 && bytes / 16 <= max;
        if ok {
            assert!(
                !self.h.shared.read_only(),
                "request {head}: range op on read-only"
            );
            assert!(
                parseable,
                "request {head}: {bytes} bytes of segments accepted"
            );
            assert_eq!(used_len, 1, "request {head}: range op used length");
        }
        if !parseable {
            return;
        }
        let segs = read_stream(mem, &c.readable, 16, bytes);
        for s in segs.chunks_exact(16) {
            let sector = u64::from_le_bytes(s[0..8].try_into().expect("8 bytes"));
            let n = u32::from_le_bytes(s[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(s[12..16].try_into().expect("4 bytes"));
            let allowed = if ty == 13 { 1 } else { 0 };
            let r = sector
                .checked_mul(512)
                .and_then(|o| Some((o, o.checked_add(u64::from(n) << 9)?)))
                .filter(|&(_, e)| e <= DEV_SIZE);
            if ok {
                assert!(
                    flags & !allowed == 0,
                    "request {head}: flags {flags:#x} accepted"
                );
                let (o, e) = r.unwrap_or_else(|| panic!("request {head}: range past end OK"));
                model.write(o, &vec![0u8; (e - o) as usize]);
            } else if let Some((o, e)) = r {
                model.forget(o, e);
            }
        }
    }
}

/// The expected device content; sectors a failed request may have touched are unknown.
pub(super) struct Model {
    pub(super) data: Vec<u8>,
    pub(super) unknown: Vec<bool>,
}

impl Model {
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let o = offset as usize;
        self.data[o..o + bytes.len()].copy_from_slice(bytes);
    }

    fn forget(&mut self, start: u64, end: u64) {
        let (s, e) = ((start >> 9) as usize, end.div_ceil(512) as usize);
        self.unknown[s..e].fill(true);
    }

    pub(super) fn compare(&self, actual: &[u8]) {
        for (s, unknown) in self.unknown.iter().enumerate() {
            let r = s * 512..(s + 1) * 512;
            if !unknown && actual[r.clone()] != self.data[r.clone()] {
                panic!("device sector {s} differs from what the requests wrote");
            }
        }
    }
}
