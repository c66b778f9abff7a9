//! The control queue (§5.6.6.2): task management functions and asynchronous notification
//! query / subscribe.

use std::sync::Arc;

use virtio_queue::Queue;
use vstor_virtio_core::GuestMemory;

use crate::error::Result;
use crate::lun_addr::LunAddr;
use crate::protocol::{ctrl, response, tmf};
use crate::ring::RingCtx;
use crate::shared::{ScsiShared, NEXUS};
use crate::tasks::Scope;

/// Bytes of `virtio_scsi_ctrl_tmf_req`: type, subtype, lun[8], id.
const TMF_REQ: usize = 24;
/// Bytes of `virtio_scsi_ctrl_an_req`: type, lun[8], event_requested.
const AN_REQ: usize = 16;
/// Bytes of `virtio_scsi_ctrl_an_resp`: event_actual, response.
const AN_RESP: usize = 5;

/// The control queue processor.
#[derive(Debug)]
pub struct CtrlQueueHandler {
    shared: Arc<ScsiShared>,
    ring: RingCtx,
}

impl CtrlQueueHandler {
    /// The handler of the control queue (index 0).
    pub fn new(shared: Arc<ScsiShared>, acked_features: u64) -> Self {
        CtrlQueueHandler {
            shared,
            ring: RingCtx::new(crate::protocol::queue::CONTROL, acked_features),
        }
    }

    /// Handles every available control request; returns whether to notify the driver.
    pub fn process_queue(&mut self, queue: &mut Queue, mem: &Arc<GuestMemory>) -> Result<bool> {
        let shared = self.shared.clone();
        self.ring.run(
            queue,
            mem,
            || true,
            |ring, queue, head| {
                ring.walk(queue, mem, head)?;
                handle(&shared, ring, mem, head)
            },
        )
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn handle(shared: &ScsiShared, ring: &RingCtx, mem: &GuestMemory, head: u16) -> Result<u32> {
    let chain = &ring.chain;
    let mut r = chain.reader();
    let mut w = chain.writer();
    let mut req = [0u8; TMF_REQ];
    let avail = (r.remaining() as usize).min(TMF_REQ);
    let io = |e: vstor_virtio_core::Error| ring.fatal(head, format!("control request: {e}"));
    r.read_exact(mem, &mut req[..avail]).map_err(io)?;
    if avail < 4 {
        return Err(ring.fatal(head, "control request shorter than its type field"));
    }
    match le32(&req) {
        ctrl::TMF => {
            if w.remaining() < 1 {
                return Err(ring.fatal(head, "no room for the TMF response"));
            }
            let resp = if avail < TMF_REQ {
                response::FAILURE
            } else {
                let lun: [u8; 8] = req[8..16].try_into().expect("8 bytes");
                let tag = u64::from_le_bytes(req[16..24].try_into().expect("8 bytes"));
                task_management(shared, le32(&req[4..]), &lun, tag)
            };
            w.write_all(mem, &[resp]).map_err(io)?;
            Ok(1)
        }
        t @ (ctrl::AN_QUERY | ctrl::AN_SUBSCRIBE) => {
            if w.remaining() < AN_RESP as u64 {
                return Err(ring.fatal(head, "no room for the AN response"));
            }
            let mut resp = [0u8; AN_RESP];
            if avail < AN_REQ {
                resp[4] = response::FAILURE;
            } else {
                let lun: [u8; 8] = req[4..12].try_into().expect("8 bytes");
                match LunAddr::decode(&lun).filter(|a| shared.unit(*a).is_some()) {
                    Some(addr) => {
                        let actual =
                            shared.an_subscribe(addr, le32(&req[12..]), t == ctrl::AN_SUBSCRIBE);
                        resp[..4].copy_from_slice(&actual.to_le_bytes());
                        resp[4] = response::OK;
                    }
                    None => resp[4] = response::BAD_TARGET,
                }
            }
            w.write_all(mem, &resp).map_err(io)?;
            Ok(AN_RESP as u32)
        }
        other => {
            // Unknown request type (§5.6.6.2 defines three): its response layout is unknown,
            // so the first writable byte gets FAILURE, as in a TMF response.
            log::warn!("virtio-scsi: unknown control request type {other}");
            if w.remaining() >= 1 {
                w.write_all(mem, &[response::FAILURE]).map_err(io)?;
                Ok(1)
            } else {
                Err(ring.fatal(head, format!("unknown control request type {other}")))
            }
        }
    }
}

/// Runs one task management function; returns its response code.
fn task_management(shared: &ScsiShared, subtype: u32, lun: &[u8; 8], tag: u64) -> u8 {
    let Some(addr) = LunAddr::decode(lun) else {
        return response::BAD_TARGET;
    };
    let Some(target) = shared.target(addr.target) else {
        return response::BAD_TARGET;
    };
    let tasks = shared.tasks();
    if subtype == tmf::I_T_NEXUS_RESET {
        // The nexus is the driver's path to the whole target.
        tasks.abort(Scope::Target(addr.target));
        for l in target.luns() {
            if let Some(u) = target.get(u32::from(l)) {
                u.nexus_reset(NEXUS);
            }
        }
        return response::FUNCTION_COMPLETE;
    }
    let Some(unit) = target.get(u32::from(addr.lun)) else {
        return response::INCORRECT_LUN;
    };
    match subtype {
        tmf::ABORT_TASK => {
            tasks.abort(Scope::Task(addr, tag));
            response::FUNCTION_COMPLETE
        }
        tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET => {
            tasks.abort(Scope::Lun(addr));
            response::FUNCTION_COMPLETE
        }
        tmf::LOGICAL_UNIT_RESET => {
            tasks.abort(Scope::Lun(addr));
            unit.reset();
            response::FUNCTION_COMPLETE
        }
        tmf::QUERY_TASK => {
            if tasks.any(Scope::Task(addr, tag)) {
                response::FUNCTION_SUCCEEDED
            } else {
                response::FUNCTION_COMPLETE
            }
        }
        tmf::QUERY_TASK_SET => {
            if tasks.any(Scope::Lun(addr)) {
                response::FUNCTION_SUCCEEDED
            } else {
                response::FUNCTION_COMPLETE
            }
        }
        // No ACA (NormACA is 0), nothing else defined.
        _ => response::FUNCTION_REJECTED,
    }
}
