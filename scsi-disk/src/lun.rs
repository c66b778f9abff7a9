//! A logical unit: executes one CDB at a time over a `BlockDev`, dispatching through the opcode
//! table, with unit attentions per I_T nexus and sense in the format the control mode page asks
//! for.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use vstor_blockdev::BlockDev;

use crate::sense::Sense;
use crate::table::{self, OpInfo};

/// SCSI status codes (SAM-5).
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION (sense data follows).
    pub const CHECK_CONDITION: u8 = 0x02;
    /// CONDITION MET.
    pub const CONDITION_MET: u8 = 0x04;
    /// BUSY.
    pub const BUSY: u8 = 0x08;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
}

/// The device type of a logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LunKind {
    /// A direct access block device (SBC).
    #[default]
    Disk,
    /// A read-only CD/DVD-ROM drive (MMC) with a removable medium of 2048-byte blocks.
    Cdrom,
}

/// What a logical unit reports about itself.
#[derive(Debug, Clone)]
pub struct LunOptions {
    /// The device type: selects the opcode table, INQUIRY data, VPD and mode pages.
    pub kind: LunKind,
    /// T10 vendor identification (8 characters, space padded).
    pub vendor: String,
    /// Product identification (16 characters).
    pub product: String,
    /// Product revision level (4 characters).
    pub revision: String,
    /// Unit serial number (VPD page 0x80).
    pub serial: String,
    /// NAA IEEE registered identifier (VPD page 0x83); 0 derives one from the serial.
    pub wwn: u64,
    /// Refuse writes (DATA PROTECT / WRITE PROTECTED).
    pub read_only: bool,
    /// Relative target port identifier (VPD 0x83 and REPORT TARGET PORT GROUPS).
    pub port: u16,
    /// Where persistent reservations are kept while APTPL is set (e.g. `<image>.pr`); `None`
    /// refuses APTPL (PTPL_C = 0). See [`crate::pr`].
    pub pr_file: Option<std::path::PathBuf>,
}

impl Default for LunOptions {
    fn default() -> Self {
        LunOptions {
            kind: LunKind::Disk,
            vendor: "VSTOR".into(),
            product: "VSTOR DISK".into(),
            revision: "0001".into(),
            serial: "vstor0".into(),
            wwn: 0,
            read_only: false,
            port: 1,
            pr_file: None,
        }
    }
}

/// One command as the transport hands it over.
#[derive(Debug)]
pub struct Command<'a> {
    /// The CDB (6 to 32 bytes).
    pub cdb: &'a [u8],
    /// Data-out buffer (parameter list or write data).
    pub data_out: &'a [u8],
    /// Data-in buffer; its length is the transport's allocation.
    pub data_in: &'a mut [u8],
    /// The I_T nexus the command came through (unit attentions and reservations are kept per
    /// nexus).
    pub nexus: u64,
}

/// The result of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// SCSI status.
    pub status: u8,
    /// Sense data (CHECK CONDITION only).
    pub sense: Vec<u8>,
    /// Bytes of `data_in` filled.
    pub data_in_len: usize,
}

/// Lock-free summaries of the state every command checks, so that a READ or WRITE with
/// nothing pending takes no lock but the medium's: each is conservative (a stale "maybe"
/// only sends a command down the locked path).
#[derive(Debug, Default)]
pub(crate) struct Hot {
    /// `nexus + 1` of a nexus that was seen and had no unit attention pending when last
    /// checked; 0 = none. Every queued unit attention resets it ([`LunState::push_ua`]).
    pub quiet: AtomicU64,
    /// Whether some nexus may have sense kept for REQUEST SENSE.
    pub sense_kept: AtomicBool,
    /// Whether a reservation (RESERVE or persistent) or a registration may exist.
    pub reserved: AtomicBool,
    /// START STOP UNIT stopped the unit.
    pub stopped: AtomicBool,
    /// Logical block size of the medium.
    pub block_size: AtomicU64,
    /// Logical blocks of the medium (0 without one).
    pub blocks: AtomicU64,
}

/// Mutable state of a logical unit.
#[derive(Debug, Default)]
pub(crate) struct LunState {
    /// The lock-free summaries (shared with the [`LogicalUnit`]).
    pub hot: Arc<Hot>,
    /// Pending unit attentions per I_T nexus, oldest first.
    pub ua: HashMap<u64, VecDeque<Sense>>,
    /// Nexuses that have been told about power-on already.
    pub seen: std::collections::HashSet<u64>,
    /// Caching mode page WCE.
    pub wce: bool,
    /// Control mode page D_SENSE: report sense in descriptor format.
    pub d_sense: bool,
    /// PREVENT ALLOW MEDIUM REMOVAL state.
    pub prevent: bool,
    /// The last sense per nexus, for REQUEST SENSE.
    pub last_sense: HashMap<u64, Sense>,
    /// The nexus holding a RESERVE(6)/(10) reservation, if any.
    pub reservation: Option<u64>,
    /// Tray and media events of a CD/DVD-ROM unit.
    pub mmc: crate::mmc::MmcState,
    /// Persistent reservations.
    pub pr: crate::pr::PrState,
}

impl LunState {
    /// Queues unit attention `s` for `nexus` (at the front for POWER ON), once.
    pub fn push_ua(&mut self, nexus: u64, s: Sense, front: bool) {
        let q = self.ua.entry(nexus).or_default();
        if !q.contains(&s) {
            if front {
                q.push_front(s);
            } else {
                q.push_back(s);
            }
        }
        self.hot.quiet.store(0, Ordering::Release);
    }

    /// Whether a reservation or registration exists.
    pub fn reserved(&self) -> bool {
        self.reservation.is_some() || !self.pr.regs.is_empty() || self.pr.reservation.is_some()
    }
}

/// A SCSI logical unit over a block device.
pub struct LogicalUnit {
    /// The medium: swapped by [`LogicalUnit::replace_medium`] (resize, eject/load); `None`
    /// while no medium is loaded.
    medium: RwLock<Option<Arc<dyn BlockDev>>>,
    pub(crate) opts: LunOptions,
    state: Mutex<LunState>,
    hot: Arc<Hot>,
    /// Commands that write the medium hold it shared; COMPARE AND WRITE holds it exclusive, so
    /// no write lands between its compare and its write (SBC-4 §5.3: atomic against other
    /// commands).
    write_gate: RwLock<()>,
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("opts", &self.opts)
            .finish()
    }
}

const COMPARE_AND_WRITE: u8 = 0x89;

/// A command's hold on [`LogicalUnit`]'s write gate while it runs.
enum Gate<'a> {
    Open,
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'a, ()>),
}

/// Commands a pending unit attention does not block (SAM-5 §5.14: INQUIRY, REPORT LUNS and
/// REQUEST SENSE).
const UA_EXEMPT: [u8; 3] = [0x12, 0xa0, 0x03];

impl LogicalUnit {
    /// A logical unit over `dev`, with the persistent reservations of `opts.pr_file` if
    /// there are any; a PR file that cannot be loaded leaves the unit without any
    /// ([`LogicalUnit::try_new`] reports why).
    pub fn new(dev: Arc<dyn BlockDev>, opts: LunOptions) -> LogicalUnit {
        let pr = crate::pr::file::load(opts.pr_file.as_deref()).unwrap_or_default();
        Self::with_pr(dev, opts, pr)
    }

    /// A logical unit over `dev`, or the error naming the file, line and field at fault when
    /// `opts.pr_file` exists but cannot be loaded.
    pub fn try_new(
        dev: Arc<dyn BlockDev>,
        opts: LunOptions,
    ) -> Result<LogicalUnit, crate::pr::PrFileError> {
        let pr = crate::pr::file::load(opts.pr_file.as_deref())?;
        Ok(Self::with_pr(dev, opts, pr))
    }

    fn with_pr(dev: Arc<dyn BlockDev>, opts: LunOptions, pr: crate::pr::PrState) -> LogicalUnit {
        let wce = dev.info().write_cache;
        let hot = Arc::new(Hot::default());
        let st = LunState {
            wce,
            pr,
            hot: hot.clone(),
            ..Default::default()
        };
        hot.reserved.store(st.reserved(), Ordering::Release);
        let lun = LogicalUnit {
            medium: RwLock::new(Some(dev)),
            opts,
            state: Mutex::new(st),
            hot,
            write_gate: RwLock::new(()),
        };
        lun.set_geometry(lun.medium().as_ref());
        lun
    }

    /// A CD/DVD-ROM logical unit ([`LunKind::Cdrom`], whatever `opts.kind` says) with `dev`
    /// in its closed tray, or empty.
    pub fn new_cdrom(dev: Option<Arc<dyn BlockDev>>, opts: LunOptions) -> LogicalUnit {
        let hot = Arc::new(Hot::default());
        let lun = LogicalUnit {
            medium: RwLock::new(dev),
            opts: LunOptions {
                kind: LunKind::Cdrom,
                ..opts
            },
            state: Mutex::new(LunState {
                hot: hot.clone(),
                ..Default::default()
            }),
            hot,
            write_gate: RwLock::new(()),
        };
        lun.set_geometry(lun.medium().as_ref());
        lun
    }

    /// Records the block size and block count of `dev` (or none) for the lock-free path.
    fn set_geometry(&self, dev: Option<&Arc<dyn BlockDev>>) {
        let bs = match (self.opts.kind, dev) {
            (LunKind::Cdrom, _) => crate::mmc::BLOCK_SIZE,
            (LunKind::Disk, Some(d)) => u64::from(d.info().logical_block_size).max(1),
            (LunKind::Disk, None) => 512,
        };
        let blocks = dev.map_or(0, |d| d.info().size / bs);
        self.hot.block_size.store(bs, Ordering::Release);
        self.hot.blocks.store(blocks, Ordering::Release);
    }

    /// The lock-free summaries.
    pub(crate) fn hot(&self) -> &Hot {
        &self.hot
    }

    /// Recomputes whether a reservation or registration exists (after the commands and
    /// resets that change them).
    pub(crate) fn refresh_reserved(&self) {
        let st = self.state();
        self.hot.reserved.store(st.reserved(), Ordering::Release);
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, LunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loaded medium, or MEDIUM NOT PRESENT.
    pub(crate) fn dev(&self) -> Result<Arc<dyn BlockDev>, Sense> {
        self.medium().ok_or(Sense::MEDIUM_NOT_PRESENT)
    }

    /// The loaded medium, if any.
    pub fn medium(&self) -> Option<Arc<dyn BlockDev>> {
        self.medium
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the medium (a resized image reopened, a disc loaded or ejected) and queues
    /// the unit attention that tells every nexus: CAPACITY DATA HAS CHANGED when the size or
    /// block size changed, NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED when a medium
    /// was loaded where there was none. Returns the previous medium.
    pub fn replace_medium(&self, dev: Option<Arc<dyn BlockDev>>) -> Option<Arc<dyn BlockDev>> {
        let geometry = |d: &Option<Arc<dyn BlockDev>>| {
            d.as_ref()
                .map(|d| (d.info().size, d.info().logical_block_size))
        };
        let new_geometry = geometry(&dev);
        let old = {
            let mut m = self.medium.write().unwrap_or_else(|e| e.into_inner());
            self.set_geometry(dev.as_ref());
            std::mem::replace(&mut *m, dev)
        };
        let old_geometry = geometry(&old);
        match (old_geometry, new_geometry) {
            (None, Some(_)) => self.raise_unit_attention(Sense::MEDIUM_MAY_HAVE_CHANGED),
            (Some(a), Some(b)) if a != b => self.raise_unit_attention(Sense::CAPACITY_CHANGED),
            _ => {}
        }
        old
    }

    /// The options the unit was created with.
    pub fn options(&self) -> &LunOptions {
        &self.opts
    }

    /// Block size in bytes (2048 on a CD/DVD-ROM unit).
    pub fn block_size(&self) -> u64 {
        self.hot.block_size.load(Ordering::Acquire)
    }

    /// Number of logical blocks.
    pub fn blocks(&self) -> u64 {
        self.hot.blocks.load(Ordering::Acquire)
    }

    /// Queues a unit attention for every nexus (e.g. capacity or mode parameters changed).
    pub fn raise_unit_attention(&self, sense: Sense) {
        let mut st = self.state();
        let nexuses: Vec<u64> = st.seen.iter().copied().collect();
        for n in nexuses {
            st.push_ua(n, sense, false);
        }
    }

    /// Executes one command.
    pub fn execute(&self, cmd: &mut Command<'_>) -> Outcome {
        if self.hot.reserved.load(Ordering::Acquire)
            && crate::spc::reservation_conflict(self, cmd.cdb, cmd.nexus)
        {
            return Outcome {
                status: status::RESERVATION_CONFLICT,
                sense: Vec::new(),
                data_in_len: 0,
            };
        }
        let result = self.run(cmd);
        if matches!(cmd.cdb.first(), Some(0x16 | 0x17 | 0x56 | 0x57 | 0x5f)) {
            // RESERVE / RELEASE / PERSISTENT RESERVE OUT: reservations may have changed.
            self.refresh_reserved();
        }
        match result {
            Ok(n) => {
                // A command that completed leaves no sense for REQUEST SENSE to report.
                if self.hot.sense_kept.load(Ordering::Acquire) {
                    let mut st = self.state();
                    st.last_sense.remove(&cmd.nexus);
                    if st.last_sense.is_empty() {
                        self.hot.sense_kept.store(false, Ordering::Release);
                    }
                }
                Outcome {
                    status: status::GOOD,
                    sense: Vec::new(),
                    data_in_len: n.min(cmd.data_in.len()),
                }
            }
            Err(s) if s == Sense::RESERVATION_CONFLICT => Outcome {
                status: status::RESERVATION_CONFLICT,
                sense: Vec::new(),
                data_in_len: 0,
            },
            Err(s) => self.check_condition(cmd.nexus, s),
        }
    }

    /// A CHECK CONDITION outcome carrying `s` in the format the unit reports.
    pub(crate) fn check_condition(&self, nexus: u64, s: Sense) -> Outcome {
        let mut st = self.state();
        st.last_sense.insert(nexus, s);
        self.hot.sense_kept.store(true, Ordering::Release);
        let sense = if st.d_sense {
            s.descriptor()
        } else {
            s.fixed()
        };
        Outcome {
            status: status::CHECK_CONDITION,
            sense,
            data_in_len: 0,
        }
    }

    fn run(&self, cmd: &mut Command<'_>) -> Result<usize, Sense> {
        let Some(&opcode) = cmd.cdb.first() else {
            return Err(Sense::INVALID_OPCODE);
        };
        let kind = self.opts.kind;
        let op = table::lookup(kind, cmd.cdb).ok_or_else(|| {
            if table::opcode_known(kind, opcode) {
                // Known opcode, unknown service action: the field at fault is byte 1.
                Sense::INVALID_FIELD_IN_CDB.in_cdb(1, Some(4))
            } else {
                Sense::INVALID_OPCODE
            }
        })?;
        check_cdb(op, cmd.cdb)?;
        self.unit_attention(opcode, cmd.nexus)?;
        if op.writes && (self.opts.read_only || self.dev()?.info().read_only) {
            return Err(Sense::WRITE_PROTECTED);
        }
        let g = &self.write_gate;
        let _gate = if opcode == COMPARE_AND_WRITE {
            Gate::Exclusive(g.write().unwrap_or_else(|e| e.into_inner()))
        } else if op.writes {
            Gate::Shared(g.read().unwrap_or_else(|e| e.into_inner()))
        } else {
            Gate::Open
        };
        (op.handler)(self, cmd)
    }

    /// Reports the oldest pending unit attention of this nexus (a nexus seen for the first
    /// time gets POWER ON, RESET).
    fn unit_attention(&self, opcode: u8, nexus: u64) -> Result<(), Sense> {
        if nexus != u64::MAX && self.hot.quiet.load(Ordering::Acquire) == nexus + 1 {
            return Ok(());
        }
        let mut st = self.state();
        if st.seen.insert(nexus) {
            st.push_ua(nexus, Sense::POWER_ON_RESET, true);
        }
        // MMC: GET CONFIGURATION and GET EVENT STATUS NOTIFICATION neither report nor clear
        // a unit attention.
        let mmc_exempt = self.opts.kind == LunKind::Cdrom && matches!(opcode, 0x46 | 0x4a);
        if UA_EXEMPT.contains(&opcode) || mmc_exempt {
            return Ok(());
        }
        let pending = st.ua.get_mut(&nexus).and_then(VecDeque::pop_front);
        if st.ua.get(&nexus).is_none_or(VecDeque::is_empty) && nexus != u64::MAX {
            self.hot.quiet.store(nexus + 1, Ordering::Release);
        }
        match pending {
            Some(s) => Err(s),
            None => Ok(()),
        }
    }
}

/// Checks the CDB against the command's usage data: long enough, and no bit set that the
/// command does not use (INVALID FIELD IN CDB pointing at the first such bit).
fn check_cdb(op: &OpInfo, cdb: &[u8]) -> Result<(), Sense> {
    if cdb.len() < op.usage.len() {
        return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(0, None));
    }
    for (i, (&b, &mask)) in cdb.iter().zip(op.usage).enumerate().skip(1) {
        let extra = b & !mask;
        if extra != 0 {
            let bit = 7 - extra.leading_zeros() as u8;
            return Err(Sense::INVALID_FIELD_IN_CDB.in_cdb(i as u16, Some(bit)));
        }
    }
    Ok(())
}
