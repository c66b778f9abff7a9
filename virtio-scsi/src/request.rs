//! One request queue (§5.6.6.1): a command request (LUN, tag, CDB, data-out) in, a response
//! (sense, residual, status, response code) and data-in out.
//!
//! The chain is read and written through cursors, so headers may span descriptors and data
//! may share them. A request the device cannot answer at all (no room for the response) stops
//! the queue; everything else is answered: a malformed request with VIRTIO_SCSI_S_FAILURE, an
//! unknown target with BAD_TARGET, a missing LUN through the target (LOGICAL UNIT NOT
//! SUPPORTED), a command a task management function aborted with ABORTED.

use std::collections::HashMap;
use std::sync::Arc;

use virtio_queue::Queue;
use vstor_scsi_disk::{status, Command, LogicalUnit, Outcome, Target};
use vstor_virtio_core::chain::{Segment, Writer};
use vstor_virtio_core::memory::host_ptr;
use vstor_virtio_core::GuestMemory;

use crate::error::Result;
use crate::lun_addr::LunAddr;
use crate::protocol::{
    feature, response, CmdHeader, CmdResponse, CMD_REQ_HEADER, CMD_RESP_HEADER, MAX_CDB_SIZE,
};
use crate::ring::RingCtx;
use crate::shared::{ScsiShared, NEXUS};

/// The request processor of one request queue, driven by one thread.
#[derive(Debug)]
pub struct ScsiQueueHandler {
    shared: Arc<ScsiShared>,
    ring: RingCtx,
    features: u64,
    /// Data-out bounce buffer, reused (grows up to the largest transfer).
    data_out: Vec<u8>,
    /// Data-in bounce buffer, reused.
    data_in: Vec<u8>,
    /// Scratch list of guest segments.
    segs: Vec<Segment>,
    /// Looked-up targets and units.
    cache: UnitCache,
}

/// Targets and units by address, valid while the device's topology number stays the same.
#[derive(Debug, Default)]
struct UnitCache {
    topology: u64,
    /// The last address looked up (most commands go to the same unit as the one before).
    last: Option<LunAddr>,
    map: HashMap<LunAddr, CachedUnit>,
}

type CachedUnit = (Arc<Target>, Option<Arc<LogicalUnit>>);

/// Most addresses cached (a guest probing every LUN does not grow it without bound).
const UNIT_CACHE_MAX: usize = 1024;

impl UnitCache {
    /// The target and unit at `addr` (`None`: no such target), borrowed from the cache.
    fn lookup(&mut self, shared: &ScsiShared, addr: LunAddr) -> Option<&CachedUnit> {
        let topology = shared.topology();
        if topology != self.topology || self.map.len() >= UNIT_CACHE_MAX {
            self.map.clear();
            self.last = None;
            self.topology = topology;
        }
        if self.last != Some(addr) && !self.map.contains_key(&addr) {
            let target = shared.target(addr.target)?;
            let unit = target.get(u32::from(addr.lun));
            self.map.insert(addr, (target, unit));
        }
        self.last = Some(addr);
        self.map.get(&addr)
    }
}

/// When the next `len` bytes (taken by `take`) are exactly `want` guest segments (1 for a
/// data-out; 2 for a data-in taken together with the response before it), a host pointer to
/// the last one and its length.
fn direct_buffer(
    mem: &GuestMemory,
    segs: &mut Vec<Segment>,
    len: u64,
    want: usize,
    take: impl FnOnce(u64, &mut Vec<Segment>) -> vstor_virtio_core::Result<()>,
) -> Option<(*mut u8, usize)> {
    segs.clear();
    take(len, segs).ok()?;
    if segs.len() != want {
        return None;
    }
    let last = *segs.last()?;
    let p = host_ptr(mem, last.addr, u64::from(last.len))?;
    Some((p, last.len as usize))
}

impl ScsiQueueHandler {
    /// A handler for queue `queue_index` with the driver's negotiated features.
    pub fn new(shared: Arc<ScsiShared>, queue_index: u16, acked_features: u64) -> Self {
        let features = acked_features & shared.features();
        ScsiQueueHandler {
            shared,
            ring: RingCtx::new(queue_index, acked_features),
            features,
            data_out: Vec::new(),
            data_in: Vec::new(),
            segs: Vec::with_capacity(4),
            cache: UnitCache::default(),
        }
    }

    /// Whether a fatal protocol error stopped this queue.
    pub fn is_broken(&self) -> bool {
        self.ring.broken
    }

    /// Executes every available request; returns whether the driver must be notified. An
    /// `Err` means the queue is unusable until the device is reset.
    pub fn process_queue(&mut self, queue: &mut Queue, mem: &Arc<GuestMemory>) -> Result<bool> {
        let shared = self.shared.clone();
        let features = self.features;
        let (data_out, data_in, segs, cache) = (
            &mut self.data_out,
            &mut self.data_in,
            &mut self.segs,
            &mut self.cache,
        );
        self.ring.run(
            queue,
            mem,
            || true,
            |ring, queue, head| {
                ring.walk(queue, mem, head)?;
                let mut req = Request {
                    shared: &shared,
                    features,
                    mem,
                    data_out,
                    data_in,
                    segs,
                    cache,
                };
                req.handle(ring, head)
            },
        )
    }
}

struct Request<'a> {
    shared: &'a ScsiShared,
    features: u64,
    mem: &'a GuestMemory,
    data_out: &'a mut Vec<u8>,
    data_in: &'a mut Vec<u8>,
    segs: &'a mut Vec<Segment>,
    cache: &'a mut UnitCache,
}

impl Request<'_> {
    /// Answers one walked chain; returns the used length.
    fn handle(&mut self, ring: &RingCtx, head: u16) -> Result<u32> {
        let chain = &ring.chain;
        let mem = self.mem;
        let sense_size = self.shared.sense_size() as usize;
        let cdb_size = (self.shared.cdb_size().min(MAX_CDB_SIZE)) as usize;
        let mut w = chain.writer();
        if w.remaining() < CMD_RESP_HEADER as u64 {
            return Err(ring.fatal(
                head,
                format!(
                    "the response needs {CMD_RESP_HEADER} device-writable bytes, the chain has {}",
                    w.remaining()
                ),
            ));
        }
        let resp_len = (CMD_RESP_HEADER + sense_size) as u64;
        let fail = |w: &mut Writer<'_>, code: u8| -> Result<u32> {
            w.write_all(mem, &CmdResponse::failed(code).to_bytes())
                .map_err(|e| ring.fatal(head, format!("writing the response: {e}")))?;
            Ok(CMD_RESP_HEADER as u32)
        };
        if w.remaining() < resp_len {
            // §5.6.6.1: the response includes sense_size bytes of sense.
            return fail(&mut w, response::FAILURE);
        }
        let mut r = chain.reader();
        let mut hdr = [0u8; CMD_REQ_HEADER + MAX_CDB_SIZE as usize];
        let hdr = &mut hdr[..CMD_REQ_HEADER + cdb_size];
        if r.remaining() < hdr.len() as u64 || r.read_exact(mem, hdr).is_err() {
            return fail(&mut w, response::FAILURE);
        }
        let h = CmdHeader::parse(hdr[..CMD_REQ_HEADER].try_into().expect("19 bytes"));
        let cdb = &hdr[CMD_REQ_HEADER..];
        let out_len = r.remaining();
        let in_len = w.remaining() - resp_len;
        if out_len > 0 && in_len > 0 && self.features & feature::INOUT == 0 {
            // Bidirectional commands need VIRTIO_SCSI_F_INOUT.
            return fail(&mut w, response::FAILURE);
        }
        let max = self.shared.options().max_transfer() as u64;
        if out_len > max {
            return fail(&mut w, response::OVERRUN);
        }
        let Some(addr) = LunAddr::decode(&h.lun) else {
            return fail(&mut w, response::BAD_TARGET);
        };
        let Some((target, unit)) = self.cache.lookup(self.shared, addr) else {
            return fail(&mut w, response::BAD_TARGET);
        };
        let (target, unit) = (&**target, unit.as_ref());
        // Data moves straight between the unit and guest memory when it is one contiguous
        // guest buffer in one direction (the common case: Linux hands a page per 4 KiB);
        // otherwise through the bounce buffers.
        let direct_out = if out_len > 0 && in_len == 0 {
            let mut rd = r.clone();
            direct_buffer(mem, self.segs, out_len, 1, |len, segs| {
                rd.take_segments(len, segs)
            })
        } else {
            None
        };
        let direct_in = if in_len > 0 && out_len == 0 && in_len <= max {
            let mut wd = w.clone();
            direct_buffer(mem, self.segs, resp_len + in_len, 2, |len, segs| {
                wd.take_segments(len, segs)
            })
            .and_then(|(p, n)| {
                // The first `resp_len` bytes must be a segment of their own: the response.
                (self.segs.len() == 2 && self.segs[0].len as u64 == resp_len).then_some((p, n))
            })
        } else {
            None
        };
        let data_out: &[u8] = match direct_out {
            // SAFETY: `direct_buffer` checked with `host_ptr` that `[p, p + n)` lies inside
            // one mapped region of `mem`, which this request holds (an `Arc`) until the
            // command returns. No other reference to these bytes exists in vstor meanwhile:
            // only one direction is ever mapped directly, and the response is written
            // afterwards through `mem`. The guest may write them concurrently, as it may any
            // DMA buffer; the unit treats them as plain bytes.
            Some((p, n)) => unsafe { std::slice::from_raw_parts(p, n) },
            None => {
                self.data_out.resize(out_len as usize, 0);
                if r.read_exact(mem, self.data_out).is_err() {
                    return fail(&mut w, response::FAILURE);
                }
                &self.data_out[..]
            }
        };
        let in_cap = in_len.min(max) as usize;
        let direct = direct_in.is_some();
        let data_in: &mut [u8] = match direct_in {
            // SAFETY: as for `data_out` above: one mapped region of `mem`, held by this
            // request, referenced by nothing else in vstor until the command returns.
            Some((p, n)) => unsafe { std::slice::from_raw_parts_mut(p, n) },
            None => {
                if self.data_in.len() < in_cap {
                    self.data_in.resize(in_cap, 0);
                }
                &mut self.data_in[..in_cap]
            }
        };
        let tasks = self.shared.tasks();
        let task = tasks.start(addr, h.tag);
        let outcome = target.execute_on(
            addr.lun,
            unit,
            &mut Command {
                cdb,
                data_out,
                data_in,
                nexus: NEXUS,
            },
        );
        if tasks.finish(task) {
            return fail(&mut w, response::ABORTED);
        }
        self.respond(ring, head, w, &outcome, sense_size, out_len, in_len, direct)
    }

    /// Writes the response (and, unless the unit wrote it in place, the data-in).
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        ring: &RingCtx,
        head: u16,
        mut w: Writer<'_>,
        o: &Outcome,
        sense_size: usize,
        out_len: u64,
        in_len: u64,
        direct: bool,
    ) -> Result<u32> {
        let mem = self.mem;
        let n = if direct {
            o.data_in_len.min(in_len as usize)
        } else {
            o.data_in_len.min(self.data_in.len())
        };
        let sense_len = o.sense.len().min(sense_size);
        let resid = if in_len > 0 {
            in_len - n as u64
        } else if o.status == status::GOOD {
            0
        } else {
            out_len
        };
        let resp = CmdResponse {
            sense_len: sense_len as u32,
            resid: u32::try_from(resid).unwrap_or(u32::MAX),
            status: o.status,
            response: response::OK,
        };
        let io =
            |e: vstor_virtio_core::Error| ring.fatal(head, format!("writing the response: {e}"));
        w.write_all(mem, &resp.to_bytes()).map_err(io)?;
        if sense_len > 0 {
            // Bytes past `sense_len` are undefined (§5.6.6.1): left as they are.
            w.write_all(mem, &o.sense[..sense_len]).map_err(io)?;
        }
        if !direct && n > 0 {
            w.skip((sense_size - sense_len) as u64).map_err(io)?;
            w.write_all(mem, &self.data_in[..n]).map_err(io)?;
        }
        Ok((CMD_RESP_HEADER + sense_size + n) as u32)
    }
}
