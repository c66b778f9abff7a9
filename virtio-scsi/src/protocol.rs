//! The wire format of virtio-scsi (VIRTIO 1.2 §5.6): feature bits, request and response
//! layouts, response codes, task management functions and events. Every field is
//! little-endian; layouts are parsed from bytes, never cast.

/// Feature bits (§5.6.3).
pub mod feature {
    /// VIRTIO_SCSI_F_INOUT: a request may carry both data-out and data-in buffers.
    pub const INOUT: u64 = 1 << 0;
    /// VIRTIO_SCSI_F_HOTPLUG: the device reports LUN hotplug and hot-unplug events.
    pub const HOTPLUG: u64 = 1 << 1;
    /// VIRTIO_SCSI_F_CHANGE: the device reports parameter changes (PARAM_CHANGE events).
    pub const CHANGE: u64 = 1 << 2;
    /// VIRTIO_SCSI_F_T10_PI: protection information (not offered).
    pub const T10_PI: u64 = 1 << 3;
}

/// Queue indices (§5.6.2): control, event, then the request queues.
pub mod queue {
    /// The control queue.
    pub const CONTROL: u16 = 0;
    /// The event queue.
    pub const EVENT: u16 = 1;
    /// The first request queue.
    pub const FIRST_REQUEST: u16 = 2;
}

/// `response` values of a command or task management function (§5.6.6.1).
pub mod response {
    /// VIRTIO_SCSI_S_OK.
    pub const OK: u8 = 0;
    /// VIRTIO_SCSI_S_OVERRUN: the data-in buffer was too small.
    pub const OVERRUN: u8 = 1;
    /// VIRTIO_SCSI_S_ABORTED: aborted by a task management function.
    pub const ABORTED: u8 = 2;
    /// VIRTIO_SCSI_S_BAD_TARGET: no such target.
    pub const BAD_TARGET: u8 = 3;
    /// VIRTIO_SCSI_S_RESET: the device was reset.
    pub const RESET: u8 = 4;
    /// VIRTIO_SCSI_S_BUSY: retry later.
    pub const BUSY: u8 = 5;
    /// VIRTIO_SCSI_S_TRANSPORT_FAILURE.
    pub const TRANSPORT_FAILURE: u8 = 6;
    /// VIRTIO_SCSI_S_TARGET_FAILURE.
    pub const TARGET_FAILURE: u8 = 7;
    /// VIRTIO_SCSI_S_NEXUS_FAILURE.
    pub const NEXUS_FAILURE: u8 = 8;
    /// VIRTIO_SCSI_S_FAILURE: anything else (a malformed request).
    pub const FAILURE: u8 = 9;
    /// VIRTIO_SCSI_S_FUNCTION_SUCCEEDED (QUERY TASK: the task exists).
    pub const FUNCTION_SUCCEEDED: u8 = 10;
    /// VIRTIO_SCSI_S_FUNCTION_REJECTED.
    pub const FUNCTION_REJECTED: u8 = 11;
    /// VIRTIO_SCSI_S_INCORRECT_LUN.
    pub const INCORRECT_LUN: u8 = 12;
    /// VIRTIO_SCSI_S_FUNCTION_COMPLETE.
    pub const FUNCTION_COMPLETE: u8 = 0;
}

/// Control queue request types (§5.6.6.2).
pub mod ctrl {
    /// VIRTIO_SCSI_T_TMF.
    pub const TMF: u32 = 0;
    /// VIRTIO_SCSI_T_AN_QUERY.
    pub const AN_QUERY: u32 = 1;
    /// VIRTIO_SCSI_T_AN_SUBSCRIBE.
    pub const AN_SUBSCRIBE: u32 = 2;
}

/// Task management function subtypes (§5.6.6.2.1).
pub mod tmf {
    /// ABORT TASK.
    pub const ABORT_TASK: u32 = 0;
    /// ABORT TASK SET.
    pub const ABORT_TASK_SET: u32 = 1;
    /// CLEAR ACA.
    pub const CLEAR_ACA: u32 = 2;
    /// CLEAR TASK SET.
    pub const CLEAR_TASK_SET: u32 = 3;
    /// I_T NEXUS RESET.
    pub const I_T_NEXUS_RESET: u32 = 4;
    /// LOGICAL UNIT RESET.
    pub const LOGICAL_UNIT_RESET: u32 = 5;
    /// QUERY TASK.
    pub const QUERY_TASK: u32 = 6;
    /// QUERY TASK SET.
    pub const QUERY_TASK_SET: u32 = 7;
}

/// Event types and reasons (§5.6.6.3).
pub mod event {
    /// VIRTIO_SCSI_T_NO_EVENT.
    pub const NO_EVENT: u32 = 0;
    /// VIRTIO_SCSI_T_TRANSPORT_RESET.
    pub const TRANSPORT_RESET: u32 = 1;
    /// VIRTIO_SCSI_T_ASYNC_NOTIFY.
    pub const ASYNC_NOTIFY: u32 = 2;
    /// VIRTIO_SCSI_T_PARAM_CHANGE.
    pub const PARAM_CHANGE: u32 = 3;
    /// VIRTIO_SCSI_T_EVENTS_MISSED: or-ed into the next event after events were dropped.
    pub const EVENTS_MISSED: u32 = 0x8000_0000;
    /// TRANSPORT_RESET reason VIRTIO_SCSI_EVT_RESET_HARD.
    pub const RESET_HARD: u32 = 0;
    /// TRANSPORT_RESET reason VIRTIO_SCSI_EVT_RESET_RESCAN: a LUN appeared.
    pub const RESET_RESCAN: u32 = 1;
    /// TRANSPORT_RESET reason VIRTIO_SCSI_EVT_RESET_REMOVED: a LUN went away.
    pub const RESET_REMOVED: u32 = 2;
    /// Bytes of one `virtio_scsi_event`.
    pub const SIZE: usize = 16;
}

/// Asynchronous notification classes (§5.6.6.2.2), as bits of `event_requested`.
pub mod an {
    /// Operational change.
    pub const OPERATIONAL_CHANGE: u32 = 1 << 1;
    /// Power management.
    pub const POWER_MGMT: u32 = 1 << 2;
    /// External request.
    pub const EXTERNAL_REQUEST: u32 = 1 << 3;
    /// Media change (the class a CD-ROM reports).
    pub const MEDIA_CHANGE: u32 = 1 << 4;
    /// Multiple initiators.
    pub const MULTI_HOST: u32 = 1 << 5;
    /// Device busy.
    pub const DEVICE_BUSY: u32 = 1 << 6;
}

/// Default (and largest) CDB size the device accepts (§5.6.4 `cdb_size`).
pub const CDB_SIZE: u32 = 32;
/// Default sense buffer size (§5.6.4 `sense_size`).
pub const SENSE_SIZE: u32 = 96;
/// Largest `cdb_size` / `sense_size` a driver may write: bounds per-request copies.
pub const MAX_CDB_SIZE: u32 = 260;
/// Largest sense buffer a driver may ask for.
pub const MAX_SENSE_SIZE: u32 = 252;

/// Bytes of `virtio_scsi_cmd_req` before the CDB: lun[8], id u64, task_attr, prio, crn.
pub const CMD_REQ_HEADER: usize = 19;
/// Bytes of `virtio_scsi_cmd_resp` before the sense buffer: sense_len u32, resid u32,
/// status_qualifier u16, status u8, response u8.
pub const CMD_RESP_HEADER: usize = 12;

/// The fixed part of a command request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdHeader {
    /// The 8-byte LUN address.
    pub lun: [u8; 8],
    /// The command identifier (the task tag).
    pub tag: u64,
    /// Task attribute (SIMPLE, ORDERED, HEAD OF QUEUE, ACA).
    pub task_attr: u8,
}

impl CmdHeader {
    /// Parses the header from its 19 bytes.
    pub fn parse(b: &[u8; CMD_REQ_HEADER]) -> CmdHeader {
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&b[..8]);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&b[8..16]);
        CmdHeader {
            lun,
            tag: u64::from_le_bytes(tag),
            task_attr: b[16],
        }
    }
}

/// The fixed part of a command response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CmdResponse {
    /// Bytes of sense data written.
    pub sense_len: u32,
    /// Residual: bytes of the data buffer not transferred.
    pub resid: u32,
    /// SCSI status.
    pub status: u8,
    /// virtio-scsi response code ([`response`]).
    pub response: u8,
}

impl CmdResponse {
    /// The response with only `response` set.
    pub fn failed(response: u8) -> CmdResponse {
        CmdResponse {
            response,
            ..Default::default()
        }
    }

    /// Its 12 bytes.
    pub fn to_bytes(self) -> [u8; CMD_RESP_HEADER] {
        let mut b = [0u8; CMD_RESP_HEADER];
        b[..4].copy_from_slice(&self.sense_len.to_le_bytes());
        b[4..8].copy_from_slice(&self.resid.to_le_bytes());
        b[10] = self.status;
        b[11] = self.response;
        b
    }
}

/// A `virtio_scsi_event` as the device writes it.
pub fn event_bytes(event: u32, lun: [u8; 8], reason: u32) -> [u8; event::SIZE] {
    let mut b = [0u8; event::SIZE];
    b[..4].copy_from_slice(&event.to_le_bytes());
    b[4..12].copy_from_slice(&lun);
    b[12..].copy_from_slice(&reason.to_le_bytes());
    b
}
