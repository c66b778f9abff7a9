//! One request queue (§5.6.6.1): a command request (LUN, tag, CDB, data-out) in, a response
//! (sense, residual, status, response code) and data-in out.
//!
//! The chain is read and written through cursors, so headers may span descriptors and data
//! may share them. A request the device cannot answer at all (no room for the response) stops
//! the queue; everything else is answered: a malformed request with VIRTIO_SCSI_S_FAILURE, an
//! unknown target with BAD_TARGET, a missing LUN through the target (LOGICAL UNIT NOT
//! SUPPORTED), a command a task management function aborted with ABORTED.

use std::sync::Arc;

use virtio_queue::Queue;
use vstor_scsi_disk::{status, Command, Outcome};
use vstor_virtio_core::chain::Writer;
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
        let (data_out, data_in) = (&mut self.data_out, &mut self.data_in);
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
        let Some(target) = self.shared.target(addr.target) else {
            return fail(&mut w, response::BAD_TARGET);
        };
        self.data_out.resize(out_len as usize, 0);
        if r.read_exact(mem, self.data_out).is_err() {
            return fail(&mut w, response::FAILURE);
        }
        let in_cap = in_len.min(max) as usize;
        if self.data_in.len() < in_cap {
            self.data_in.resize(in_cap, 0);
        }
        let tasks = self.shared.tasks();
        let task = tasks.start(addr, h.tag);
        let outcome = if tasks.is_aborted(&task) {
            None
        } else {
            Some(target.execute(
                addr.lun,
                &mut Command {
                    cdb,
                    data_out: self.data_out,
                    data_in: &mut self.data_in[..in_cap],
                    nexus: NEXUS,
                },
            ))
        };
        let aborted = tasks.finish(task);
        let outcome = match outcome {
            Some(o) if !aborted => o,
            _ => return fail(&mut w, response::ABORTED),
        };
        self.respond(ring, head, w, &outcome, sense_size, out_len, in_len)
    }

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
    ) -> Result<u32> {
        let mem = self.mem;
        let n = o.data_in_len.min(self.data_in.len());
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
        w.write_all(mem, &o.sense[..sense_len]).map_err(io)?;
        w.write_zeroes(mem, (sense_size - sense_len) as u64)
            .map_err(io)?;
        w.write_all(mem, &self.data_in[..n]).map_err(io)?;
        Ok((CMD_RESP_HEADER + sense_size + n) as u32)
    }
}
